// Binary columns come back as Buffer from pg and as Uint8Array from node:sqlite: one view for both.

/** A Buffer view of the same bytes (no copy). */
export function asBuffer(value: Uint8Array): Buffer {
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

export function asBufferOrNull(value: Uint8Array | null): Buffer | null {
  return value === null ? null : asBuffer(value);
}

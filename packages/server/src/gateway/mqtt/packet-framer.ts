// Splits an MQTT byte stream into whole packets (fixed header + Remaining Length + that many bytes)
// without interpreting them, so the connection can validate each packet's raw bytes before any
// decoder sees them. The declared size of the packet at the head of the stream is known as soon as
// its fixed header has arrived, which lets the connection refuse an oversized packet before
// buffering its body. A packet that lies inside one chunk is returned as a view of that chunk (no
// copy); only a packet spread over several chunks is copied, once, when its last byte arrives.

/** `peekLength()` result while the fixed header has not fully arrived yet. */
export const LENGTH_UNKNOWN = -1;
/** `peekLength()` result when the Remaining Length is not a valid Variable Byte Integer. */
export const LENGTH_MALFORMED = -2;

/** Largest number of bytes a Variable Byte Integer may use (MQTT 5.0 1.5.5, 3.1.1 2.2.3). */
const MAX_VARINT_BYTES = 4;

export class PacketFramer {
  /** Unconsumed chunks in arrival order; the first one is read from `#offset`. */
  readonly #chunks: Buffer[] = [];
  #offset = 0;
  /** Bytes buffered in `#chunks` past `#offset`. */
  #buffered = 0;
  /** Total length of the head packet once its fixed header is known, else LENGTH_UNKNOWN. */
  #headLength = LENGTH_UNKNOWN;

  /** Bytes received and not yet returned as packets. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /**
   * Total size in bytes (fixed header included) of the packet at the head of the stream: known as
   * soon as its fixed header has arrived, before its body. LENGTH_UNKNOWN while the fixed header is
   * incomplete (or nothing is buffered); LENGTH_MALFORMED when the Remaining Length uses more than
   * four bytes, after which the stream cannot be framed any further [MQTT-1.5.5-1 (v5) / 2.2.3].
   */
  peekLength(): number {
    if (this.#headLength !== LENGTH_UNKNOWN) return this.#headLength;
    if (this.#buffered < 2) return LENGTH_UNKNOWN;
    let value = 0;
    let multiplier = 1;
    for (let i = 1; i <= MAX_VARINT_BYTES; i++) {
      if (i >= this.#buffered) return LENGTH_UNKNOWN;
      const byte = this.#byteAt(i);
      value += (byte & 0x7f) * multiplier;
      if ((byte & 0x80) === 0) {
        this.#headLength = 1 + i + value;
        return this.#headLength;
      }
      multiplier *= 128;
    }
    this.#headLength = LENGTH_MALFORMED;
    return LENGTH_MALFORMED;
  }

  /** The head packet if all its bytes have arrived, else null. */
  take(): Buffer | null {
    const length = this.peekLength();
    if (length < 0 || this.#buffered < length) return null;
    this.#headLength = LENGTH_UNKNOWN;
    this.#buffered -= length;
    const first = this.#chunks[0]!;
    const available = first.length - this.#offset;
    if (available >= length) {
      // Whole packet inside one chunk: a view, no copy.
      const packet = first.subarray(this.#offset, this.#offset + length);
      if (available === length) this.#shiftChunk();
      else this.#offset += length;
      return packet;
    }
    const packet = Buffer.allocUnsafe(length);
    let written = 0;
    while (written < length) {
      const chunk = this.#chunks[0]!;
      const n = Math.min(chunk.length - this.#offset, length - written);
      chunk.copy(packet, written, this.#offset, this.#offset + n);
      written += n;
      if (this.#offset + n === chunk.length) this.#shiftChunk();
      else this.#offset += n;
    }
    return packet;
  }

  /** Drops everything buffered (the connection is closing). */
  clear(): void {
    this.#chunks.length = 0;
    this.#offset = 0;
    this.#buffered = 0;
    this.#headLength = LENGTH_UNKNOWN;
  }

  #shiftChunk(): void {
    this.#chunks.shift();
    this.#offset = 0;
  }

  /** The byte `index` positions past the read offset; the caller ensures index < #buffered. */
  #byteAt(index: number): number {
    let i = index + this.#offset;
    for (const chunk of this.#chunks) {
      if (i < chunk.length) return chunk[i]!;
      i -= chunk.length;
    }
    return 0; // unreachable: index < #buffered
  }
}

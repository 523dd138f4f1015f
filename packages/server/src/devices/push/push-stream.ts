// One Server-Sent Events stream (BIND-4): an ordered queue of events, each checked for access just before
// it is written, a bounded buffer (a client that does not read is disconnected, memory does not grow),
// heartbeats, a maximum lifetime. The hub decides which events reach the queue.
import type { PushEvent, PushEventType } from './push-events.ts';

/** The response the stream writes to (an http.ServerResponse after the reply is hijacked). */
export interface SseSink {
  write(chunk: string): boolean;
  readonly writableLength: number;
  /** True once the connection is gone (a client that left before the stream started). */
  readonly destroyed?: boolean;
  /** Ends the response; `finished` runs once the last bytes are handed to the connection. */
  end(finished?: () => void): void;
  destroy(): void;
  once(event: 'close', listener: () => void): unknown;
}

/** Who a stream is for: a person (their devices, re-checked) or a vendor's principal (one device of its tenant). */
export type PushScope =
  | { readonly kind: 'person'; readonly userId: string; readonly deviceId: string | null }
  | { readonly kind: 'tenant'; readonly vendorId: string; readonly deviceId: string };

export type StreamEndReason = 'client' | 'slow-client' | 'max-lifetime' | 'unauthenticated' | 'shutdown' | 'error';

export interface PushStreamOptions {
  id: number;
  principalKey: string;
  scope: PushScope;
  types: ReadonlySet<PushEventType>;
  sink: SseSink;
  bufferBytes: number;
  heartbeatMs: number;
  maxStreamMs: number;
  /** May this stream's person see this device now? (cached briefly by the hub). */
  mayView(deviceId: string): Promise<boolean>;
  /** Re-validates the credential at each heartbeat; false ends the stream. */
  reauthenticate?: () => Promise<boolean>;
  onClose(stream: PushStream, reason: StreamEndReason): void;
}

export class PushStream {
  readonly id: number;
  readonly principalKey: string;
  readonly scope: PushScope;
  readonly types: ReadonlySet<PushEventType>;
  /** Devices whose events are routed here (a person's: owned and shared, kept current by the hub). */
  readonly devices = new Set<string>();
  readonly #o: PushStreamOptions;
  #queue: PushEvent[] = [];
  #queuedBytes = 0;
  #draining = false;
  #closed = false;
  #beating = false;
  #heartbeat: NodeJS.Timeout;
  #lifetime: NodeJS.Timeout;
  readonly stats = { written: 0, dropped: 0 };

  /** Resolves once the end frame has been handed to the connection, or the connection is gone. */
  readonly finished: Promise<void>;
  #finish!: () => void;

  constructor(options: PushStreamOptions) {
    this.#o = options;
    this.finished = new Promise((resolve) => {
      this.#finish = resolve;
    });
    this.id = options.id;
    this.principalKey = options.principalKey;
    this.scope = options.scope;
    this.types = options.types;
    options.sink.once('close', () => {
      this.close('client');
      this.#finish();
    });
    this.#heartbeat = setInterval(() => void this.#beat(), options.heartbeatMs);
    this.#lifetime = setTimeout(() => this.end('max-lifetime'), options.maxStreamMs);
    this.#heartbeat.unref();
    this.#lifetime.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Writes a frame that needs no access check (the greeting, a reset, a revocation notice). */
  send(frame: string): void {
    if (this.#closed) return;
    this.#o.sink.write(frame);
    this.#checkBuffer();
  }

  /** Queues an event; written in order once its device is checked. */
  enqueue(event: PushEvent): void {
    if (this.#closed || !this.types.has(event.type)) return;
    this.#queue.push(event);
    this.#queuedBytes += event.frame.length;
    if (!this.#checkBuffer()) return;
    if (!this.#draining) void this.#drain();
  }

  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const event = this.#queue.shift()!;
        this.#queuedBytes -= event.frame.length;
        if (!(await this.#allowed(event))) {
          this.stats.dropped++;
          continue;
        }
        if (this.#closed) return;
        this.#o.sink.write(event.frame);
        this.stats.written++;
        if (!this.#checkBuffer()) return;
      }
    } catch {
      // An access check that fails (store unavailable) ends the stream: never deliver unchecked.
      this.end('error');
    } finally {
      this.#draining = false;
    }
  }

  async #allowed(event: PushEvent): Promise<boolean> {
    const scope = this.scope;
    if (scope.kind === 'tenant') return event.vendorId === scope.vendorId && event.deviceId === scope.deviceId;
    if (!this.devices.has(event.deviceId)) return false;
    return this.#o.mayView(event.deviceId);
  }

  /** False (and the stream destroyed) once unsent bytes exceed the bound: a slow client is cut off. */
  #checkBuffer(): boolean {
    if (this.#o.sink.writableLength + this.#queuedBytes <= this.#o.bufferBytes) return true;
    this.#destroy('slow-client');
    return false;
  }

  async #beat(): Promise<void> {
    if (this.#o.sink.destroyed) return this.close('client');
    if (this.#closed || this.#beating) return;
    this.#beating = true;
    try {
      const valid = this.#o.reauthenticate ? await this.#o.reauthenticate().catch(() => false) : true;
      if (!valid) return this.end('unauthenticated');
      this.send(': heartbeat\n\n');
    } finally {
      this.#beating = false;
    }
  }

  /** Tells the client why, then ends the response (the client reconnects when it makes sense). */
  end(reason: StreamEndReason): void {
    if (this.#closed) return;
    this.#o.sink.write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
    // Closed first: the sink's own 'close' must not record the end as the client's.
    this.close(reason);
    this.#o.sink.end(() => this.#finish());
  }

  #destroy(reason: StreamEndReason): void {
    if (this.#closed) return;
    this.close(reason);
    this.#o.sink.destroy();
  }

  close(reason: StreamEndReason): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    clearTimeout(this.#lifetime);
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#o.onClose(this, reason);
  }
}

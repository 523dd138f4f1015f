// The processes serving one database (scale mode, RES-2): each announces itself in cluster_nodes and
// renews a heartbeat; a process whose heartbeat is older than `staleAfterMs` is gone (crashed or
// stopped), and what it held (device presence) may be set offline by the others.
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../store/index.ts';

export interface ClusterNodesOptions {
  db: Kysely<Database>;
  /** Heartbeat period (cluster.heartbeatSeconds). */
  heartbeatMs: number;
  log: { warn(object: object, message: string): void };
  now?: () => number;
}

/** A random node ID (CSPRNG), fresh for every process start: `nod_` + 16 hex characters. */
export function newNodeId(): string {
  return `nod_${randomBytes(8).toString('hex')}`;
}

export class ClusterNodes {
  readonly nodeId: string;
  readonly #o: ClusterNodesOptions;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: ClusterNodesOptions, nodeId: string = newNodeId()) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.nodeId = nodeId;
  }

  /** A node missing three heartbeats is gone. */
  get staleAfterMs(): number {
    return this.#o.heartbeatMs * 3;
  }

  /** Registers this process and starts the heartbeat; forgets nodes gone for a day. */
  async start(): Promise<void> {
    const now = this.#now();
    await this.#o.db
      .insertInto('cluster_nodes')
      .values({ node_id: this.nodeId, started_at: now, heartbeat_at: now })
      .execute();
    await this.#o.db
      .deleteFrom('cluster_nodes')
      .where('heartbeat_at', '<', now - 86_400_000)
      .execute();
    this.#timer = setInterval(() => {
      this.#o.db
        .updateTable('cluster_nodes')
        .set({ heartbeat_at: this.#now() })
        .where('node_id', '=', this.nodeId)
        .execute()
        .catch((error: unknown) => this.#o.log.warn({ err: error }, 'cluster: heartbeat not written'));
    }, this.#o.heartbeatMs);
    this.#timer.unref();
  }

  /** Node IDs with a recent heartbeat (this one included). */
  async liveNodes(): Promise<string[]> {
    const rows = await this.#o.db
      .selectFrom('cluster_nodes')
      .select('node_id')
      .where('heartbeat_at', '>=', this.#now() - this.staleAfterMs)
      .execute();
    return rows.map((row) => row.node_id);
  }

  /** Stops the heartbeat and leaves the table (a clean stop is not a crash). */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#o.db
      .deleteFrom('cluster_nodes')
      .where('node_id', '=', this.nodeId)
      .execute()
      .catch((error: unknown) => this.#o.log.warn({ err: error }, 'cluster: node not removed'));
  }
}

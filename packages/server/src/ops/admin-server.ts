// Operations listener (OPS-1): Prometheus metrics and liveness on a separate port, bound to loopback by
// default. Plain HTTP on loopback is the one documented exception to "no plain listeners"; bound to any
// other address it serves HTTPS with the platform's certificate.
import http from 'node:http';
import https from 'node:https';
import { type AddressInfo, isIPv4 } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry } from 'prom-client';

export interface MetricSources {
  broker: () => Record<string, number> & { connections: number };
  telemetry: () => { rowsWritten: number; rowsRefused: number; queued: number };
  audit: () => { appended: number; refused: number; failedBatches: number; checkpoints: number; size: number };
  limits: () => Map<string, number>;
  detections: () => Map<string, number>;
  /** Secure-channel refusals by reason (CHAN-3, CHAN-4); absent before the guard counts them. */
  secureChannelRefusals?: () => Map<string, number>;
}

/** A registry per platform instance (tests run several in one process). */
export function createMetrics(sources: MetricSources): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service: 'castellan' });
  new Gauge({
    name: 'castellan_mqtt_connections',
    help: 'Open MQTT connections',
    registers: [registry],
    collect() {
      this.set(sources.broker().connections);
    },
  });
  new Counter({
    name: 'castellan_mqtt_events_total',
    help: 'MQTT broker counters by event',
    labelNames: ['event'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [event, value] of Object.entries(sources.broker()))
        if (event !== 'connections') this.inc({ event }, value);
    },
  });
  new Counter({
    name: 'castellan_telemetry_rows_total',
    help: 'Telemetry rows written or refused',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      const t = sources.telemetry();
      this.reset();
      this.inc({ outcome: 'written' }, t.rowsWritten);
      this.inc({ outcome: 'refused' }, t.rowsRefused);
    },
  });
  new Counter({
    name: 'castellan_audit_appends_total',
    help: 'Audit entries appended',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(sources.audit().appended);
    },
  });
  new Gauge({
    name: 'castellan_audit_tree_size',
    help: 'Entries in the audit Merkle tree',
    registers: [registry],
    collect() {
      this.set(sources.audit().size);
    },
  });
  new Counter({
    name: 'castellan_rate_limited_total',
    help: 'Requests and messages refused by a rate limit, by dimension',
    labelNames: ['dimension'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [dimension, value] of sources.limits())
        if (!dimension.startsWith('ids-')) this.inc({ dimension }, value);
    },
  });
  new Counter({
    name: 'castellan_detections_total',
    help: 'Intrusion-detection findings, by kind',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [kind, value] of sources.detections()) this.inc({ kind }, value);
    },
  });
  new Counter({
    name: 'castellan_secure_channel_refusals_total',
    help: 'Secure-channel hellos and frames refused (replayed, too old, stale, forged, wrong device...), by reason',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [reason, value] of sources.secureChannelRefusals?.() ?? []) this.inc({ reason }, value);
    },
  });
  return registry;
}

export interface AdminServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIPv4(host) && host.startsWith('127.'));
}

export async function startAdminServer(
  options: {
    host: string;
    port: number;
    tls: { cert: string; key: string; minVersion: 'TLSv1.2' | 'TLSv1.3'; ciphers: string; groups?: string };
  },
  registry: Registry,
  log: Logger,
): Promise<AdminServer> {
  const handler: http.RequestListener = (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
          res.end(text);
        },
        (error: unknown) => {
          log.error({ err: error }, 'admin: metrics failed');
          res.writeHead(500).end();
        },
      );
    } else if (req.method === 'GET' && path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
    } else {
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end('{"error":{"code":"ERR_HTTP_NOT_FOUND","message":"Route not found"}}');
    }
  };
  const plain = isLoopback(options.host);
  const server = plain
    ? http.createServer(handler)
    : https.createServer(
        {
          cert: options.tls.cert,
          key: options.tls.key,
          minVersion: options.tls.minVersion,
          ciphers: options.tls.ciphers,
          ...(options.tls.groups ? { ecdhCurve: options.tls.groups } : {}),
          honorCipherOrder: true,
        },
        handler,
      );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.removeAllListeners('error');
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${plain ? 'http' : 'https'}://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// The cost of authentication and authorisation on the HTTPS API: the same server, the same load tool
// (autocannon, in the runner process; the platform runs in its own process), in one run:
//   healthz        GET /healthz: TLS, routing, the guard's per-IP limit; no credential
//   device read    GET /v1/devices/:id with a person's session token: the guard, the session lookup
//                  (hash, one indexed read, idle check), the person's memberships, the access policy
//                  and the device read itself
// Reported as requests/s with p50/p99 latency, and the ratio device read / healthz. Any non-2xx answer
// fails the case: a rate measured on refusals would be meaningless.
import autocannon from 'autocannon';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';
import { PlatformProcess } from '../lib/platform-process.ts';

interface Plan {
  warmupSeconds: number;
  seconds: number;
  connections: number;
}

const QUICK: Plan = { warmupSeconds: 0, seconds: 1, connections: 8 };
const FULL: Plan = { warmupSeconds: 3, seconds: 10, connections: 32 };

const COLUMNS: readonly Column[] = [
  { key: 'healthzRps', label: 'healthz req/s' },
  { key: 'healthzP50', label: 'healthz p50 ms', digits: 1 },
  { key: 'healthzP99', label: 'healthz p99 ms', digits: 1 },
  { key: 'authRps', label: 'device read req/s' },
  { key: 'authP50', label: 'device read p50 ms', digits: 1 },
  { key: 'authP99', label: 'device read p99 ms', digits: 1 },
  { key: 'ratio', label: 'device read / healthz', digits: 2 },
];

async function load(url: string, caPem: string, plan: Plan, seconds: number, headers: Record<string, string> = {}) {
  const result = await autocannon({
    url,
    connections: plan.connections,
    duration: seconds,
    headers,
    servername: 'localhost',
    tlsOptions: { ca: caPem },
  });
  if (result.non2xx > 0 || result.errors > 0 || result.timeouts > 0) {
    throw new Error(
      `${url}: ${result.non2xx} non-2xx answers, ${result.errors} errors, ${result.timeouts} timeouts out of ${result['2xx'] + result.non2xx}`,
    );
  }
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99 };
}

async function runCase(context: MeasureContext, backend: 'sqlite' | 'postgres', plan: Plan): Promise<CaseResult> {
  const label = backend;
  // The same case name whether it passes or fails, so that runs and the goals table can match it.
  const caseName = `${label}, ${plan.connections} connections`;
  let platform: PlatformProcess | undefined;
  try {
    platform = await PlatformProcess.start({
      label,
      databaseUrl: backend === 'postgres' ? context.postgresUrl : '',
      devices: 1,
    });
    const ready = platform.ready;
    const healthz = new URL('/healthz', ready.httpUrl).toString();
    const device = new URL(`/v1/devices/${ready.devices[0]!.id}`, ready.httpUrl).toString();
    const auth = { authorization: `Bearer ${ready.sessionToken}` };
    if (plan.warmupSeconds > 0) {
      context.progress(`http-auth ${label}: warm-up`);
      await load(healthz, ready.caPem, plan, plan.warmupSeconds);
      await load(device, ready.caPem, plan, plan.warmupSeconds, auth);
    }
    context.progress(`http-auth ${label}: /healthz for ${plan.seconds} s`);
    const h = await load(healthz, ready.caPem, plan, plan.seconds);
    context.progress(`http-auth ${label}: device read for ${plan.seconds} s`);
    const a = await load(device, ready.caPem, plan, plan.seconds, auth);
    return {
      measure: 'http-auth',
      case: caseName,
      ok: true,
      metrics: {
        healthzRps: h.rps,
        healthzP50: h.p50,
        healthzP99: h.p99,
        authRps: a.rps,
        authP50: a.p50,
        authP99: a.p99,
        ratio: h.rps > 0 ? a.rps / h.rps : null,
      },
      details: { backend, connections: plan.connections, seconds: plan.seconds, warmupSeconds: plan.warmupSeconds },
    };
  } catch (error) {
    return { measure: 'http-auth', case: caseName, ok: false, error: (error as Error).message, metrics: {} };
  } finally {
    await platform?.stop();
  }
}

export const httpAuthMeasure: Measure = {
  name: 'http-auth',
  description:
    'Authenticated API rate: a device read with a session (session check + memberships + access policy + read) against /healthz on the same server, same load tool, same run',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const backend of ['sqlite', 'postgres'] as const) results.push(await runCase(context, backend, plan));
    return results;
  },
};

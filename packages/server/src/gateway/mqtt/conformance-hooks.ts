// Anonymous, open-topic hooks for third-party MQTT conformance suites and fuzzers ONLY. They accept any
// client without credentials and allow every topic (the broker's own protocol validation still applies).
// They carry an unforgeable brand (membership of a module-private WeakSet): the production TLS listener
// refuses any broker built with them, and the conformance listener refuses any broker built without them
// (CHAN-6: anonymous access is never offered on a production listener).
import { randomUUID } from 'node:crypto';
import type { AuthenticateResult, BrokerHooks, ConnectRequest } from './broker-hooks.ts';

const branded = new WeakSet<object>();

/** Prefix of the client identifiers assigned to clients that connect with an empty one. */
export const CONFORMANCE_ASSIGNED_CLIENT_ID_PREFIX = 'conformance-';

/** A fresh set of anonymous, open hooks, branded so that every listener can tell them apart. */
export function conformanceHooks(): BrokerHooks {
  const hooks: BrokerHooks = {
    async authenticate(request: ConnectRequest): Promise<AuthenticateResult> {
      const clientId =
        request.clientId === '' ? `${CONFORMANCE_ASSIGNED_CLIENT_ID_PREFIX}${randomUUID()}` : request.clientId;
      return {
        ok: true,
        identity: { principalId: clientId, kind: 'service', clientId, attributes: { conformance: 'true' } },
      };
    },
    authorizePublish: () => true,
    authorizeSubscribe: () => true,
    // Nothing is stored: messages are routed in memory only.
    onPublish: () => {},
  };
  Object.freeze(hooks);
  branded.add(hooks);
  return hooks;
}

/** True only for an object returned by conformanceHooks(); copies and look-alikes are not branded. */
export function isConformanceHooks(hooks: unknown): boolean {
  return typeof hooks === 'object' && hooks !== null && branded.has(hooks);
}

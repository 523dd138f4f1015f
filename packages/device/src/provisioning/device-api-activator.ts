// The device's calls for binding over the device API (BIND-1, BIND-5), through the SDK's DeviceHttpClient:
// signed in timestamp mode or with a device token (DEV-6: the secret never travels; docs/protocol.md), over
// HTTPS that trusts only the pinned platform CA.
import { DeviceHttpClient } from '../device-http-client.ts';
import type { DeviceBindResult, ProvisioningActivator } from './device-provisioning-simulator.ts';

export type DeviceApiActivatorOptions =
  | {
      deviceId: string;
      secret: string;
      /** PEM CA certificate of the platform (pinned: no system trust store). */
      ca: string | Buffer;
      /** Certificate name to check; defaults to the URL's host. */
      servername?: string;
      timeoutMs?: number;
    }
  /** An existing client (its own base URL; the payload's platformUrl is then not used). */
  | { client: DeviceHttpClient };

/** A refusal from the device API, with the platform's stable error code. */
export class DeviceApiError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, message: string, status: number) {
    super(message);
    this.name = 'DeviceApiError';
    this.code = code;
    this.status = status;
  }
}

/** The activator a real device uses: POST /v1/device-api/bind and /reset, authenticated as the device. */
export function deviceApiActivator(options: DeviceApiActivatorOptions): ProvisioningActivator {
  const clientFor = (platformUrl: string): DeviceHttpClient =>
    'client' in options
      ? options.client
      : new DeviceHttpClient({
          baseUrl: platformUrl,
          deviceId: options.deviceId,
          secret: options.secret,
          ca: options.ca,
          ...(options.servername ? { servername: options.servername } : {}),
          ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
        });
  async function post<T>(platformUrl: string, path: string, body: unknown): Promise<T> {
    const res = await clientFor(platformUrl).request<T>('POST', path, body);
    if (res.status >= 200 && res.status < 300) return res.body;
    const error = (res.body as { error?: { code?: string; message?: string } } | null)?.error ?? {};
    throw new DeviceApiError(error.code ?? 'ERR_DEVICE_API', error.message ?? `HTTP ${res.status}`, res.status);
  }
  return {
    async bind(platformUrl, bindingToken) {
      const result = await post<DeviceBindResult>(platformUrl, '/v1/device-api/bind', { bindingToken });
      return { boundAt: result.boundAt, alreadyBound: result.alreadyBound };
    },
    async reportReset(platformUrl) {
      const result = await post<{ unbound: boolean }>(platformUrl, '/v1/device-api/reset', {});
      return { unbound: result.unbound };
    },
  };
}

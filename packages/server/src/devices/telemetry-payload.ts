// Telemetry payloads are JSON objects of data points (UTF-8). Product schemas (devices issue) narrow
// this further; here the shape is checked so the store only ever holds parseable JSON.

import { payloadJson } from './payload-json.ts';

export type TelemetryCheck = { ok: true } | { ok: false; reason: string };

export function checkTelemetryPayload(payload: Buffer): TelemetryCheck {
  if (payload.length === 0) return { ok: false, reason: 'payload is empty' };
  const json = payloadJson(payload);
  if (!json.ok) return json;
  const { value } = json;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'payload must be a JSON object' };
  }
  return { ok: true };
}

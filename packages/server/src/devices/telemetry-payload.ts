// Telemetry payloads are JSON objects of data points (UTF-8). Product schemas (devices issue) narrow
// this further; here the shape is checked so the store only ever holds parseable JSON.

export type TelemetryCheck = { ok: true } | { ok: false; reason: string };

export function checkTelemetryPayload(payload: Buffer): TelemetryCheck {
  if (payload.length === 0) return { ok: false, reason: 'payload is empty' };
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(payload);
  } catch {
    return { ok: false, reason: 'payload is not valid UTF-8' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'payload is not valid JSON' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'payload must be a JSON object' };
  }
  return { ok: true };
}

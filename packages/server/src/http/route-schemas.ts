// Shared pieces for route schemas: every object rejects unknown fields; every error response
// points at the one ErrorResponse shape.
import { type TProperties, Type } from 'typebox';

export function StrictObject<T extends TProperties>(properties: T, options: { description?: string } = {}) {
  return Type.Object(properties, { ...options, additionalProperties: false });
}

/** A human-readable name: 1–200 characters, no leading or trailing whitespace. */
export const DisplayName = Type.String({ minLength: 1, maxLength: 200, pattern: '^\\S(.*\\S)?$' });

const errorRef = { $ref: 'ErrorResponse#' } as const;

/** Standard error responses for authenticated routes. */
export const authenticatedErrors = { 400: errorRef, 401: errorRef, 403: errorRef, 404: errorRef } as const;
export const publicErrors = { 400: errorRef, 401: errorRef } as const;
/** Any of the three ways in (accounts/request-authenticator.ts); the policy then decides per route. */
export const bearerSecurity: { [scheme: string]: string[] }[] = [
  { bearer: [] },
  { sessionCookie: [] },
  { operatorSignature: [] },
];
/** A device's own request: signed with its secret (timestamp mode) or a device token (DEV-6). */
export const deviceSecurity: { [scheme: string]: string[] }[] = [{ deviceSignature: [] }, { deviceToken: [] }];

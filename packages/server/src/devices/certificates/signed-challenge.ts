// Signed challenge-response for asymmetric devices (DEV-5, DEV-6): SM2 devices (OpenSSL under Node 26
// cannot use SM2 certificates in TLS) and, over HTTPS, P-256/RSA certificate devices answer the device
// API's challenge with a signature by their registered key instead of an HMAC of their secret; the
// device token they receive is accepted as the MQTT password. The device SDK signs the same bytes
// (packages/device/src/device-keys.ts).
import type { DeviceChallengeVerifier } from '../device-http-auth.ts';
import type { DeviceCertificatesService } from './device-certificates-service.ts';

export const SIGNED_CHALLENGE_CONTEXT = 'castellan device signature v1';

/** UTF-8 of "castellan device signature v1|<deviceId>|<challenge>|<clientNonce>". */
export function signedChallengeMessage(deviceId: string, challenge: string, clientNonce: string): Buffer {
  return Buffer.from([SIGNED_CHALLENGE_CONTEXT, deviceId, challenge, clientNonce].join('|'), 'utf8');
}

/**
 * A challenge verifier for the device API: the response is a base64url signature over the signed
 * challenge message by one of the device's usable keys (certificate or SM2 key). Proves 'certificate'.
 */
export function signedChallengeVerifier(
  certificates: Pick<DeviceCertificatesService, 'verifySignature'>,
): DeviceChallengeVerifier {
  return async ({ deviceId, challenge, clientNonce, response }) => {
    if (!/^[A-Za-z0-9_-]+$/.test(response)) return null;
    const signature = Buffer.from(response, 'base64url');
    const credential = await certificates.verifySignature(
      deviceId,
      signedChallengeMessage(deviceId, challenge, clientNonce),
      signature,
    );
    return credential ? 'certificate' : null;
  };
}

export {
  type CertificateAuthentication,
  type DeviceCa,
  type DeviceCertificate,
  type DeviceCertificateKind,
  DeviceCertificatesService,
  type DeviceCertificatesServiceOptions,
} from './device-certificates-service.ts';
export { deviceCertificatesRoutes, type DeviceCertificatesRoutesOptions } from './device-certificates-routes.ts';
export { SIGNED_CHALLENGE_CONTEXT, signedChallengeMessage, signedChallengeVerifier } from './signed-challenge.ts';
export { type DeviceKeyAlgorithm, DEVICE_URI_PREFIX, deviceUri } from './certificate-checks.ts';

// Device certificates and vendor CAs (DEV-5), for vendors (operators with devices:write, organisation
// owners). A device or vendor of another tenant answers exactly like a missing one (ORG-3).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action, can } from '../../accounts/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { DevicesService } from '../devices-service.ts';
import type { DeviceCa, DeviceCertificate, DeviceCertificatesService } from './device-certificates-service.ts';
import { DeviceIdParam, deviceFor } from '../device-route-params.ts';

export interface DeviceCertificatesRoutesOptions {
  devices: DevicesService;
  certificates: DeviceCertificatesService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
  now?: () => number;
}

const VendorId = Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' });
const Pem = (description: string) => Type.String({ minLength: 1, maxLength: 16384, description });

export const CertificateView = StrictObject({
  id: Type.String(),
  deviceId: Type.String(),
  kind: Type.Union([Type.Literal('issued'), Type.Literal('vendor-ca'), Type.Literal('sm2-key')], {
    description:
      "issued: by the vendor's platform CA from a CSR; vendor-ca: by a CA the vendor uploaded; sm2-key: a raw SM2 key",
  }),
  algorithm: Type.Union([Type.Literal('p256'), Type.Literal('rsa'), Type.Literal('sm2')]),
  serial: Type.String({ description: 'lower-case hex; names the credential in the revoke route' }),
  fingerprint: Type.String({ description: 'SHA-256 of the DER certificate (of the public key for sm2-key), hex' }),
  caId: Type.Union([Type.String(), Type.Null()]),
  certificate: Type.Union([Type.String(), Type.Null()], { description: 'PEM; null for an sm2-key' }),
  notBefore: Type.Integer(),
  notAfter: Type.Integer(),
  createdAt: Type.Integer(),
  revokedAt: Type.Union([Type.Integer(), Type.Null()]),
  status: Type.Union([Type.Literal('active'), Type.Literal('revoked'), Type.Literal('expired')]),
});

const CaView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  kind: Type.Union([Type.Literal('platform'), Type.Literal('uploaded')]),
  fingerprint: Type.String({ description: 'SHA-256 of the DER certificate, hex' }),
  subject: Type.String(),
  certificate: Type.String({ description: 'PEM' }),
  notBefore: Type.Integer(),
  notAfter: Type.Integer(),
  createdAt: Type.Integer(),
  revokedAt: Type.Union([Type.Integer(), Type.Null()]),
});

export function presentCertificate(c: DeviceCertificate, now: number) {
  return {
    id: c.id,
    deviceId: c.deviceId,
    kind: c.kind,
    algorithm: c.algorithm,
    serial: c.serial,
    fingerprint: c.fingerprint,
    caId: c.caId,
    certificate: c.certificatePem,
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    createdAt: c.createdAt,
    revokedAt: c.revokedAt,
    status: c.revokedAt !== null ? ('revoked' as const) : c.notAfter < now ? ('expired' as const) : ('active' as const),
  };
}

const presentCa = (ca: DeviceCa) => ({
  id: ca.id,
  vendorId: ca.vendorId,
  kind: ca.kind,
  fingerprint: ca.fingerprint,
  subject: ca.subject,
  certificate: ca.certificatePem,
  notBefore: ca.notBefore,
  notAfter: ca.notAfter,
  createdAt: ca.createdAt,
  revokedAt: ca.revokedAt,
});

/** The `:vendorId` the caller manages device credentials of; another tenant's answers "not found". */
export function vendorFor(request: FastifyRequest, action: Action): string {
  const vendorId = (request.params as { vendorId: string }).vendorId;
  if (!can(principalOf(request), action, { vendorId })) throw new CastellanError('ERR_VENDOR_NOT_FOUND');
  return vendorId;
}

export async function deviceCertificatesRoutes(
  app: FastifyInstance,
  { devices, certificates, authenticate, audit, now = Date.now }: DeviceCertificatesRoutesOptions,
) {
  app.post(
    '/v1/devices/:deviceId/certificates',
    {
      onRequest: authenticate,
      schema: {
        summary:
          'Give a device an asymmetric credential: a certificate from a CSR, a vendor-CA certificate, or an SM2 key',
        description:
          'Exactly one of: `csr` (PEM PKCS#10, P-256 or RSA ≥ 2048; the platform issues a certificate with ' +
          "CN = device ID from the vendor's device CA, created on first use), `certificate` (PEM, issued by a CA " +
          'the vendor uploaded; recorded for the device), or `publicKey` + `algorithm: "sm2"` (130 hex digits, ' +
          '04‖X‖Y; SM2 devices authenticate by signed challenge).',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: StrictObject({
          csr: Type.Optional(Pem('PKCS#10 certificate signing request, PEM')),
          certificate: Type.Optional(Pem('device certificate issued by an uploaded vendor CA, PEM')),
          publicKey: Type.Optional(
            Type.String({ pattern: '^04[0-9a-fA-F]{128}$', description: 'SM2 public key, uncompressed, hex' }),
          ),
          algorithm: Type.Optional(Type.Literal('sm2')),
        }),
        response: {
          201: StrictObject({
            certificate: CertificateView,
            caCertificate: Type.Union([Type.String(), Type.Null()], {
              description: 'PEM of the issuing CA (null for an SM2 key)',
            }),
          }),
          ...authenticatedErrors,
          409: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request, reply) => {
      const device = await deviceFor(request, devices, 'device.credentials.manage');
      if (device.status === 'decommissioned') throw new CastellanError('ERR_DEVICE_DECOMMISSIONED');
      const body = request.body as { csr?: string; certificate?: string; publicKey?: string; algorithm?: 'sm2' };
      const given = [body.csr, body.certificate, body.publicKey].filter((v) => v !== undefined).length;
      if (given !== 1 || (body.publicKey !== undefined) !== (body.algorithm !== undefined)) {
        throw new CastellanError('ERR_VALIDATION_FAILED', {
          message: 'Give exactly one of csr, certificate, or publicKey with algorithm "sm2"',
        });
      }
      let certificate: DeviceCertificate;
      let caPem: string | null = null;
      let type: string;
      if (body.csr !== undefined) {
        ({ certificate, caPem } = await certificates.issueFromCsr(device, body.csr));
        type = 'device.certificate.issue';
      } else if (body.certificate !== undefined) {
        certificate = await certificates.registerVendorCertificate(device, body.certificate);
        caPem = (await certificates.listCas(device.vendorId)).find((ca) => ca.id === certificate.caId)!.certificatePem;
        type = 'device.certificate.register';
      } else {
        certificate = await certificates.registerSm2Key(device, body.publicKey!);
        type = 'device.key.register';
      }
      await audit(request, {
        type,
        tenant: device.vendorId,
        target: device.id,
        details: {
          serial: certificate.serial,
          fingerprint: certificate.fingerprint,
          algorithm: certificate.algorithm,
          caId: certificate.caId,
          notAfter: certificate.notAfter,
        },
      });
      return reply.status(201).send({ certificate: presentCertificate(certificate, now()), caCertificate: caPem });
    },
  );

  app.get(
    '/v1/devices/:deviceId/certificates',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's certificates and keys, revoked and expired ones included",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: StrictObject({ items: Type.Array(CertificateView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.read');
      const at = now();
      return { items: (await certificates.list(device.id)).map((c) => presentCertificate(c, at)) };
    },
  );

  app.get(
    '/v1/vendors/:vendorId/device-cas',
    {
      onRequest: authenticate,
      schema: {
        summary: "The vendor's device CAs: the platform-run one (once created) and the uploaded ones",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        response: { 200: StrictObject({ items: Type.Array(CaView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const vendorId = vendorFor(request, 'device.list');
      return { items: (await certificates.listCas(vendorId)).map(presentCa) };
    },
  );

  app.post(
    '/v1/vendors/:vendorId/device-cas/registration-codes',
    {
      onRequest: authenticate,
      schema: {
        summary: 'A one-time registration code for the proof of possession of a vendor CA (valid one hour)',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        response: {
          201: StrictObject({
            registrationCode: Type.String({
              description: 'put it as the CN of a verification certificate signed by the CA key',
            }),
            expiresAt: Type.Integer(),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request, reply) => {
      const vendorId = vendorFor(request, 'device.credentials.manage');
      const { code, expiresAt } = await certificates.newRegistrationCode(vendorId);
      await audit(request, {
        type: 'device.ca.registration-code',
        tenant: vendorId,
        target: vendorId,
        details: { expiresAt },
      });
      return reply.status(201).send({ registrationCode: code, expiresAt });
    },
  );

  app.post(
    '/v1/vendors/:vendorId/device-cas',
    {
      onRequest: authenticate,
      schema: {
        summary: "Register the vendor's own device CA, with proof of possession of its key",
        description:
          'certificate: the CA certificate (PEM; basic constraints cA, P-256 or RSA ≥ 2048). ' +
          'verificationCertificate: a certificate whose CN is an unused registration code of the vendor, ' +
          'signed by the CA key. Device certificates it issues are then accepted once recorded for their ' +
          'device (POST /v1/devices/:deviceId/certificates with `certificate`).',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        body: StrictObject({
          certificate: Pem('the CA certificate, PEM'),
          verificationCertificate: Pem('CN = registration code, signed by the CA key, PEM'),
        }),
        response: { 201: CaView, ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request, reply) => {
      const vendorId = vendorFor(request, 'device.credentials.manage');
      const body = request.body as { certificate: string; verificationCertificate: string };
      const ca = await certificates.registerCa(vendorId, body.certificate, body.verificationCertificate);
      await audit(request, {
        type: 'device.ca.register',
        tenant: vendorId,
        target: ca.id,
        details: { fingerprint: ca.fingerprint, subject: ca.subject, notAfter: ca.notAfter },
      });
      return reply.status(201).send(presentCa(ca));
    },
  );
}

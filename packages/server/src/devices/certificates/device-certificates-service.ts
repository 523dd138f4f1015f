// Asymmetric device identities (DEV-5): a per-vendor device CA run by the platform (P-256, created on
// first use, private key sealed under the vendor's key), certificates issued from CSRs, CAs vendors
// upload with proof of possession (AWS IoT style: a registration code signed into a verification
// certificate by the CA's key), certificates those CAs issued, and raw SM2 keys (OpenSSL under Node 26
// cannot use SM2 certificates in TLS, so SM2 devices sign challenges instead). Every credential is
// recorded per device; at connect time a client certificate must be one of the device's records, chain
// to its (still active) CA, be valid now and name the device.
import { createHash, webcrypto, X509Certificate } from 'node:crypto';
import type { Kysely } from 'kysely';
import { CastellanError } from '../../errors/index.ts';
import { newId } from '../../lib/random-ids.ts';
import { asBuffer } from '../../lib/bytes.ts';
import type { Database } from '../../store/index.ts';
import type { Device, DevicesService, FieldCipher } from '../devices-service.ts';
import {
  canSignCertificates,
  type DeviceKeyAlgorithm,
  deviceUri,
  issuedBy,
  keyAlgorithmOf,
  namesDevice,
  newSerial,
  normaliseSerial,
  parseCertificate,
  sha256Hex,
  sm2Spki,
  spkiOf,
  strongSignature,
  subjectField,
  validAt,
  verifiedCsr,
  verifyDeviceSignature,
  x509,
} from './certificate-checks.ts';

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** The platform's device CAs live ten years; device certificates never outlive their CA. */
const CA_VALIDITY_MS = 10 * 365 * 86_400_000;
/** Registration codes of the proof of possession: one hour, single use. */
const REGISTRATION_CODE_TTL_MS = 3_600_000;
/** Clock skew allowance on the certificates the platform issues. */
const BACKDATE_MS = 60_000;

const caKeyAad = (caId: string) => `device_cas.key_ciphertext:${caId}`;

export type DeviceCertificateKind = 'issued' | 'vendor-ca' | 'sm2-key';

export interface DeviceCertificate {
  readonly id: string;
  readonly deviceId: string;
  readonly vendorId: string;
  /** The issuing CA; null for a raw SM2 key. */
  readonly caId: string | null;
  readonly kind: DeviceCertificateKind;
  readonly algorithm: DeviceKeyAlgorithm;
  readonly serial: string;
  readonly fingerprint: string;
  readonly certificatePem: string | null;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly createdAt: number;
  readonly revokedAt: number | null;
  readonly revokeReason: string | null;
}

export interface DeviceCa {
  readonly id: string;
  readonly vendorId: string;
  readonly kind: 'platform' | 'uploaded';
  readonly fingerprint: string;
  readonly subject: string;
  readonly certificatePem: string;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly createdAt: number;
  readonly revokedAt: number | null;
}

/** What a verified client certificate proved. */
export type CertificateAuthentication =
  | { readonly ok: true; readonly device: Device; readonly certificate: DeviceCertificate }
  | {
      readonly ok: false;
      /** For the audit log and debugging; the client only ever hears "bad credentials". */
      readonly reason: 'unknown-certificate' | 'revoked' | 'not-valid-now' | 'wrong-device' | 'chain' | 'malformed';
    };

export interface DeviceCertificatesServiceOptions {
  db: Kysely<Database>;
  /** Seals the platform CAs' private keys under the vendor's key (the keys subsystem). */
  secrets: FieldCipher;
  devices: DevicesService;
  /** Validity of certificates issued from CSRs and of registered SM2 keys (devices.certificateDays). */
  certificateDays: number;
  now?: () => number;
}

type CertificateRow = Database['device_certificates'];
type CaRow = Database['device_cas'];

export class DeviceCertificatesService {
  readonly #db: Kysely<Database>;
  readonly #secrets: FieldCipher;
  readonly #devices: DevicesService;
  readonly #validityMs: number;
  readonly #now: () => number;
  /** One creation per vendor at a time (the store's unique slot decides across processes). */
  readonly #creating = new Map<string, Promise<DeviceCa>>();
  /** Parsed CA certificates by ID (certificates never change; revocation is read from the row). */
  readonly #caCerts = new Map<string, X509Certificate>();

  constructor(options: DeviceCertificatesServiceOptions) {
    this.#db = options.db;
    this.#secrets = options.secrets;
    this.#devices = options.devices;
    this.#validityMs = options.certificateDays * 86_400_000;
    this.#now = options.now ?? Date.now;
  }

  // ---- CAs ----------------------------------------------------------------------------------------

  /** The vendor's platform-run device CA, created on first use. */
  platformCa(vendorId: string): Promise<DeviceCa> {
    let pending = this.#creating.get(vendorId);
    if (!pending) {
      pending = this.#ensurePlatformCa(vendorId).finally(() => this.#creating.delete(vendorId));
      this.#creating.set(vendorId, pending);
    }
    return pending;
  }

  async #ensurePlatformCa(vendorId: string): Promise<DeviceCa> {
    const existing = await this.#platformCaRow(vendorId);
    if (existing) return toCa(existing);
    const now = this.#now();
    const id = newId('dca');
    const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: newSerial(),
      name: `CN=Castellan device CA ${vendorId}, O=Castellan`,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + CA_VALIDITY_MS),
      signingAlgorithm: SIGN,
      keys,
      extensions: [
        // pathLen 0: it signs device certificates only, never another CA.
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    // The key is created (and audited) before the row is written, outside any transaction.
    await this.#secrets.ensureKey(vendorId);
    const sealed = await this.#secrets.encrypt(vendorId, pkcs8, caKeyAad(id));
    pkcs8.fill(0);
    const der = Buffer.from(cert.rawData);
    await this.#db
      .insertInto('device_cas')
      .values({
        id,
        vendor_id: vendorId,
        kind: 'platform',
        slot: 'platform',
        fingerprint: sha256Hex(der),
        subject: cert.subject,
        certificate_pem: cert.toString('pem'),
        key_ciphertext: sealed,
        not_before: cert.notBefore.getTime(),
        not_after: cert.notAfter.getTime(),
        created_at: now,
        revoked_at: null,
      })
      .onConflict((oc) => oc.columns(['vendor_id', 'slot']).doNothing())
      .execute();
    // Another process may have won the race: its CA is the vendor's.
    const row = await this.#platformCaRow(vendorId);
    if (!row) throw new CastellanError('ERR_INTERNAL', { message: 'device CA could not be stored' });
    return toCa(row);
  }

  #platformCaRow(vendorId: string): Promise<CaRow | undefined> {
    return this.#db
      .selectFrom('device_cas')
      .selectAll()
      .where('vendor_id', '=', vendorId)
      .where('slot', '=', 'platform')
      .executeTakeFirst();
  }

  async listCas(vendorId: string): Promise<DeviceCa[]> {
    const rows = await this.#db
      .selectFrom('device_cas')
      .selectAll()
      .where('vendor_id', '=', vendorId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toCa);
  }

  /**
   * A one-time registration code (64 hex digits, one hour): the vendor puts it in the CN of a
   * verification certificate signed by the CA key it wants to register. Stored as SHA-256 only.
   */
  async newRegistrationCode(vendorId: string): Promise<{ code: string; expiresAt: number }> {
    const code = Buffer.from(webcrypto.getRandomValues(new Uint8Array(32))).toString('hex');
    const now = this.#now();
    const expiresAt = now + REGISTRATION_CODE_TTL_MS;
    // Expired codes of the vendor go as new ones come: the table stays small.
    await this.#db
      .deleteFrom('device_ca_registration_codes')
      .where('vendor_id', '=', vendorId)
      .where('expires_at', '<', now)
      .execute();
    await this.#db
      .insertInto('device_ca_registration_codes')
      .values({ code_hash: codeHash(code), vendor_id: vendorId, expires_at: expiresAt, used_at: null })
      .execute();
    return { code, expiresAt };
  }

  /**
   * Registers a CA certificate the vendor uploads, with proof of possession of its key: the
   * verification certificate's CN is an unused registration code of this vendor and the CA's key
   * signed it. The code is used up only by a successful registration.
   */
  async registerCa(vendorId: string, certificatePem: string, verificationPem: string): Promise<DeviceCa> {
    const now = this.#now();
    const ca = parseCertificate(certificatePem);
    if (
      !ca ||
      !ca.ca ||
      !canSignCertificates(ca.raw) ||
      !validAt(ca, now) ||
      keyAlgorithmOf(spkiOf(ca)) === null ||
      !strongSignature(ca.raw)
    ) {
      throw new CastellanError('ERR_DEVICE_CA_INVALID');
    }
    const verification = parseCertificate(verificationPem);
    const codes = verification ? subjectField(verification, 'CN') : [];
    if (
      !verification ||
      codes.length !== 1 ||
      !/^[0-9a-f]{64}$/.test(codes[0]!) ||
      !validAt(verification, now) ||
      !issuedBy(verification, ca)
    ) {
      throw new CastellanError('ERR_DEVICE_CA_POP_FAILED');
    }
    const fingerprint = sha256Hex(ca.raw);
    const duplicate = await this.#db
      .selectFrom('device_cas')
      .select('id')
      .where('fingerprint', '=', fingerprint)
      .executeTakeFirst();
    if (duplicate) throw new CastellanError('ERR_DEVICE_CA_DUPLICATE');
    const row: CaRow = {
      id: newId('dca'),
      vendor_id: vendorId,
      kind: 'uploaded',
      slot: fingerprint,
      fingerprint,
      subject: ca.subject.replaceAll('\n', ', '),
      certificate_pem: ca.toString(),
      key_ciphertext: null,
      not_before: ca.validFromDate.getTime(),
      not_after: ca.validToDate.getTime(),
      created_at: now,
      revoked_at: null,
    };
    await this.#db.transaction().execute(async (trx) => {
      const used = await trx
        .updateTable('device_ca_registration_codes')
        .set({ used_at: now })
        .where('code_hash', '=', codeHash(codes[0]!))
        .where('vendor_id', '=', vendorId)
        .where('used_at', 'is', null)
        .where('expires_at', '>', now)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) throw new CastellanError('ERR_DEVICE_CA_POP_FAILED');
      const inserted = await trx
        .insertInto('device_cas')
        .values(row)
        .onConflict((oc) => oc.column('fingerprint').doNothing())
        .returning('id')
        .executeTakeFirst();
      if (!inserted) throw new CastellanError('ERR_DEVICE_CA_DUPLICATE');
    });
    return toCa(row);
  }

  /**
   * Revokes a CA the vendor uploaded: every certificate it issued is refused from now on. Returns the
   * CA and the devices holding an unrevoked certificate from it (to disconnect), or null when the
   * vendor has no such uploaded CA (already revoked counts as found).
   */
  async revokeCa(vendorId: string, caId: string): Promise<{ ca: DeviceCa; deviceIds: string[] } | null> {
    const now = this.#now();
    await this.#db
      .updateTable('device_cas')
      .set({ revoked_at: now })
      .where('id', '=', caId)
      .where('vendor_id', '=', vendorId)
      .where('kind', '=', 'uploaded')
      .where('revoked_at', 'is', null)
      .execute();
    const row = await this.#db
      .selectFrom('device_cas')
      .selectAll()
      .where('id', '=', caId)
      .where('vendor_id', '=', vendorId)
      .where('kind', '=', 'uploaded')
      .executeTakeFirst();
    if (!row) return null;
    const devices = await this.#db
      .selectFrom('device_certificates')
      .select('device_id')
      .distinct()
      .where('ca_id', '=', caId)
      .where('revoked_at', 'is', null)
      .execute();
    return { ca: toCa(row), deviceIds: devices.map((d) => d.device_id) };
  }

  // ---- device credentials -------------------------------------------------------------------------

  /**
   * Issues a certificate from a CSR with the vendor's platform CA: CN = device ID, SAN URI
   * `urn:castellan:device:<id>`, client authentication only. The CSR's subject and requested
   * extensions are ignored: the platform decides what it certifies.
   */
  async issueFromCsr(device: Device, csrPem: string): Promise<{ certificate: DeviceCertificate; caPem: string }> {
    const csr = await verifiedCsr(csrPem);
    if (!csr) throw new CastellanError('ERR_DEVICE_CSR_INVALID');
    const spki = Buffer.from(csr.publicKey.rawData);
    const algorithm = keyAlgorithmOf(spki);
    if (!algorithm) throw new CastellanError('ERR_DEVICE_KEY_UNSUPPORTED');
    const ca = await this.platformCa(device.vendorId);
    const caRow = await this.#db
      .selectFrom('device_cas')
      .select('key_ciphertext')
      .where('id', '=', ca.id)
      .executeTakeFirstOrThrow();
    const pkcs8 = await this.#secrets.decrypt(device.vendorId, asBuffer(caRow.key_ciphertext!), caKeyAad(ca.id));
    const keyData = Uint8Array.from(pkcs8);
    let signingKey: CryptoKey;
    try {
      signingKey = await webcrypto.subtle.importKey('pkcs8', keyData, EC, false, ['sign']);
    } finally {
      pkcs8.fill(0);
      keyData.fill(0);
    }
    const caCert = new x509.X509Certificate(ca.certificatePem);
    const now = this.#now();
    const serial = newSerial();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: `CN=${device.id}`,
      issuer: caCert.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(Math.min(now + this.#validityMs, ca.notAfter)),
      signingAlgorithm: SIGN,
      publicKey: spki,
      signingKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          algorithm === 'rsa'
            ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
            : x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceUri(device.id) }]),
        await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
      ],
    });
    const der = Buffer.from(cert.rawData);
    const row: CertificateRow = {
      id: newId('dcr'),
      device_id: device.id,
      vendor_id: device.vendorId,
      ca_id: ca.id,
      kind: 'issued',
      algorithm,
      serial: normaliseSerial(serial),
      fingerprint: sha256Hex(der),
      public_key: spki,
      certificate_pem: cert.toString('pem'),
      not_before: cert.notBefore.getTime(),
      not_after: cert.notAfter.getTime(),
      created_at: now,
      revoked_at: null,
      revoke_reason: null,
    };
    await this.#insertCredential(row);
    return { certificate: toCertificate(row), caPem: ca.certificatePem };
  }

  /** Records a device certificate issued by one of the vendor's uploaded (active) CAs. */
  async registerVendorCertificate(device: Device, certificatePem: string): Promise<DeviceCertificate> {
    const now = this.#now();
    const cert = parseCertificate(certificatePem);
    if (!cert || cert.ca || !validAt(cert, now) || !namesDevice(cert, device.id) || !strongSignature(cert.raw)) {
      throw new CastellanError('ERR_DEVICE_CERT_INVALID');
    }
    const spki = spkiOf(cert);
    const algorithm = keyAlgorithmOf(spki);
    if (!algorithm) throw new CastellanError('ERR_DEVICE_KEY_UNSUPPORTED');
    const cas = await this.#db
      .selectFrom('device_cas')
      .selectAll()
      .where('vendor_id', '=', device.vendorId)
      .where('kind', '=', 'uploaded')
      .where('revoked_at', 'is', null)
      .execute();
    const issuer = cas.find((ca) => {
      const caCert = this.#caCert(ca.id, ca.certificate_pem);
      return validAt(caCert, now) && issuedBy(cert, caCert);
    });
    if (!issuer) throw new CastellanError('ERR_DEVICE_CERT_INVALID');
    const row: CertificateRow = {
      id: newId('dcr'),
      device_id: device.id,
      vendor_id: device.vendorId,
      ca_id: issuer.id,
      kind: 'vendor-ca',
      algorithm,
      serial: normaliseSerial(cert.serialNumber),
      fingerprint: sha256Hex(cert.raw),
      public_key: spki,
      certificate_pem: cert.toString(),
      not_before: cert.validFromDate.getTime(),
      not_after: cert.validToDate.getTime(),
      created_at: now,
      revoked_at: null,
      revoke_reason: null,
    };
    await this.#insertCredential(row);
    return toCertificate(row);
  }

  /**
   * Records a raw SM2 public key (130 hex digits, 04‖X‖Y) for signed challenge-response: @peculiar/x509
   * cannot verify SM2 CSRs and TLS cannot use SM2 certificates here, so the key itself is registered.
   * It gets a serial and a validity (devices.certificateDays) like a certificate.
   */
  async registerSm2Key(device: Device, publicKeyHex: string): Promise<DeviceCertificate> {
    const spki = sm2Spki(publicKeyHex);
    if (!spki) throw new CastellanError('ERR_DEVICE_KEY_UNSUPPORTED');
    const now = this.#now();
    const row: CertificateRow = {
      id: newId('dcr'),
      device_id: device.id,
      vendor_id: device.vendorId,
      ca_id: null,
      kind: 'sm2-key',
      algorithm: 'sm2',
      serial: newSerial(),
      // Per device: the same key registered for two devices would make them one identity.
      fingerprint: sha256Hex(spki),
      public_key: spki,
      certificate_pem: null,
      not_before: now,
      not_after: now + this.#validityMs,
      created_at: now,
      revoked_at: null,
      revoke_reason: null,
    };
    await this.#insertCredential(row);
    return toCertificate(row);
  }

  async #insertCredential(row: CertificateRow): Promise<void> {
    const inserted = await this.#db
      .insertInto('device_certificates')
      .values(row)
      .onConflict((oc) => oc.column('fingerprint').doNothing())
      .returning('id')
      .executeTakeFirst();
    if (!inserted) throw new CastellanError('ERR_DEVICE_CREDENTIAL_DUPLICATE');
  }

  async list(deviceId: string): Promise<DeviceCertificate[]> {
    const rows = await this.#db
      .selectFrom('device_certificates')
      .selectAll()
      .where('device_id', '=', deviceId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toCertificate);
  }

  /** Revokes the device's unrevoked certificates (or keys) with this serial; returns those revoked now. */
  async revoke(deviceId: string, serial: string, reason: string): Promise<DeviceCertificate[]> {
    const normalised = normaliseSerial(serial);
    const rows = await this.#db
      .selectFrom('device_certificates')
      .selectAll()
      .where('device_id', '=', deviceId)
      .where('serial', '=', normalised)
      .where('revoked_at', 'is', null)
      .execute();
    if (rows.length === 0) return [];
    const now = this.#now();
    await this.#db
      .updateTable('device_certificates')
      .set({ revoked_at: now, revoke_reason: reason })
      .where(
        'id',
        'in',
        rows.map((r) => r.id),
      )
      .where('revoked_at', 'is', null)
      .execute();
    return rows.map((r) => toCertificate({ ...r, revoked_at: now, revoke_reason: reason }));
  }

  /** Revokes every certificate and key of the device; returns how many were revoked now. */
  async revokeAll(deviceId: string, reason: string): Promise<number> {
    const result = await this.#db
      .updateTable('device_certificates')
      .set({ revoked_at: this.#now(), revoke_reason: reason })
      .where('device_id', '=', deviceId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  // ---- authentication -----------------------------------------------------------------------------

  /**
   * Verifies a TLS client certificate (DER) at connect time. The TLS handshake proved the client
   * holds its key; this proves the certificate is a recorded, unrevoked credential of the device
   * (and of `claimedDeviceId` when the client named one), valid now, naming the device, and issued by
   * the vendor's platform CA or an uploaded CA that is still active.
   */
  async authenticate(der: Uint8Array, claimedDeviceId: string | undefined): Promise<CertificateAuthentication> {
    const fingerprint = sha256Hex(der);
    const row = await this.#db
      .selectFrom('device_certificates as c')
      .innerJoin('device_cas as a', 'a.id', 'c.ca_id')
      .selectAll('c')
      .select([
        'a.vendor_id as ca_vendor_id',
        'a.certificate_pem as ca_pem',
        'a.revoked_at as ca_revoked_at',
        'a.not_after as ca_not_after',
      ])
      .where('c.fingerprint', '=', fingerprint)
      .executeTakeFirst();
    if (!row || row.ca_id === null) return { ok: false, reason: 'unknown-certificate' };
    if (row.revoked_at !== null || row.ca_revoked_at !== null) return { ok: false, reason: 'revoked' };
    if (claimedDeviceId !== undefined && claimedDeviceId !== row.device_id)
      return { ok: false, reason: 'wrong-device' };
    if (row.ca_vendor_id !== row.vendor_id) return { ok: false, reason: 'chain' };
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(Buffer.from(der));
    } catch {
      return { ok: false, reason: 'malformed' };
    }
    const ca = this.#caCert(row.ca_id, row.ca_pem);
    const now = this.#now();
    if (!validAt(cert, now) || !validAt(ca, now)) return { ok: false, reason: 'not-valid-now' };
    if (!namesDevice(cert, row.device_id)) return { ok: false, reason: 'wrong-device' };
    if (!issuedBy(cert, ca)) return { ok: false, reason: 'chain' };
    const device = await this.#devices.getDevice(row.device_id);
    if (!device || device.vendorId !== row.vendor_id) return { ok: false, reason: 'unknown-certificate' };
    return { ok: true, device, certificate: toCertificate(row) };
  }

  /**
   * Verifies a device's signature with one of its usable keys (unrevoked, valid now; certificate
   * keys only while their CA is active): the signed challenge-response of SM2 devices (and of P-256 or
   * RSA devices over HTTPS, DEV-6). Returns the credential that verified it, or null.
   */
  async verifySignature(
    deviceId: string,
    message: Uint8Array,
    signature: Uint8Array,
  ): Promise<DeviceCertificate | null> {
    const now = this.#now();
    const rows = await this.#db
      .selectFrom('device_certificates as c')
      .leftJoin('device_cas as a', 'a.id', 'c.ca_id')
      .selectAll('c')
      .select(['a.revoked_at as ca_revoked_at', 'a.not_after as ca_not_after'])
      .where('c.device_id', '=', deviceId)
      .where('c.revoked_at', 'is', null)
      .where('c.not_before', '<=', now)
      .where('c.not_after', '>=', now)
      .execute();
    for (const row of rows) {
      if (row.ca_id !== null && (row.ca_revoked_at !== null || (row.ca_not_after ?? 0) < now)) continue;
      if (verifyDeviceSignature(row.algorithm, asBuffer(row.public_key), message, signature)) {
        return toCertificate(row);
      }
    }
    return null;
  }

  /** Of these fingerprints, the ones still usable now (for the sweep of live connections). */
  async stillValid(fingerprints: readonly string[]): Promise<Set<string>> {
    const valid = new Set<string>();
    const now = this.#now();
    for (let i = 0; i < fingerprints.length; i += 500) {
      const rows = await this.#db
        .selectFrom('device_certificates as c')
        .leftJoin('device_cas as a', 'a.id', 'c.ca_id')
        .select(['c.fingerprint', 'c.ca_id', 'a.revoked_at as ca_revoked_at', 'a.not_after as ca_not_after'])
        .where('c.fingerprint', 'in', fingerprints.slice(i, i + 500))
        .where('c.revoked_at', 'is', null)
        .where('c.not_after', '>=', now)
        .execute();
      for (const row of rows) {
        if (row.ca_id !== null && (row.ca_revoked_at !== null || (row.ca_not_after ?? 0) < now)) continue;
        valid.add(row.fingerprint);
      }
    }
    return valid;
  }

  /** Re-wraps the vendor's platform CA key under its current key version (after a rotation, KEY-2). */
  async rewrapCaKeys(vendorId: string): Promise<number> {
    const rows = await this.#db
      .selectFrom('device_cas')
      .select(['id', 'key_ciphertext'])
      .where('vendor_id', '=', vendorId)
      .where('key_ciphertext', 'is not', null)
      .execute();
    let moved = 0;
    for (const row of rows) {
      const current = asBuffer(row.key_ciphertext!);
      const rewrapped = await this.#secrets.rewrap(vendorId, current, caKeyAad(row.id));
      if (!rewrapped) continue;
      const result = await this.#db
        .updateTable('device_cas')
        .set({ key_ciphertext: rewrapped })
        .where('id', '=', row.id)
        .where('key_ciphertext', '=', current)
        .executeTakeFirst();
      moved += Number(result.numUpdatedRows);
    }
    return moved;
  }

  #caCert(id: string, pem: string): X509Certificate {
    let cert = this.#caCerts.get(id);
    if (!cert) {
      cert = new X509Certificate(pem);
      if (this.#caCerts.size >= 1000) this.#caCerts.clear();
      this.#caCerts.set(id, cert);
    }
    return cert;
  }
}

function codeHash(code: string): Buffer {
  return createHash('sha256').update(code, 'utf8').digest();
}

function toCa(row: CaRow): DeviceCa {
  return {
    id: row.id,
    vendorId: row.vendor_id,
    kind: row.kind,
    fingerprint: row.fingerprint,
    subject: row.subject,
    certificatePem: row.certificate_pem,
    notBefore: Number(row.not_before),
    notAfter: Number(row.not_after),
    createdAt: Number(row.created_at),
    revokedAt: row.revoked_at === null ? null : Number(row.revoked_at),
  };
}

function toCertificate(row: CertificateRow): DeviceCertificate {
  return {
    id: row.id,
    deviceId: row.device_id,
    vendorId: row.vendor_id,
    caId: row.ca_id,
    kind: row.kind,
    algorithm: row.algorithm,
    serial: row.serial,
    fingerprint: row.fingerprint,
    certificatePem: row.certificate_pem,
    notBefore: Number(row.not_before),
    notAfter: Number(row.not_after),
    createdAt: Number(row.created_at),
    revokedAt: row.revoked_at === null ? null : Number(row.revoked_at),
    revokeReason: row.revoke_reason,
  };
}

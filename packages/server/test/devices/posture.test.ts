// Device posture (DEV-10) on both databases, devices through the SDK (DeviceClient.reportPosture):
// golden values per product and firmware version; a matching report raises nothing; a tampered digest,
// a missing core file, an unknown firmware version or a lower security level raise a guard alert
// naming the finding, an audit entry and a `posture.deviation` change (and weigh on the device's risk
// score, IDS-2); a malformed report is refused with PUBACK 0x99 and stores nothing. CHAN-8: the SDK
// adds what its TLS connection negotiated (group, version, cipher); the platform stores and shows it,
// lists a product's devices by group, and flags a classical key exchange at level L3.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { connectionTls, DeviceClient, type DeviceConnectError, reportPosture } from '@castellan/device';
import fc from 'fast-check';
import type { DeviceChange } from '../../src/devices/device-events.ts';
import { parsePostureReport } from '../../src/devices/posture/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

/** PUBACK 0x99 Payload format invalid: mqtt.js reports the reason code (the SDK's own check says MQTT_PUBACK_153). */
const PAYLOAD_FORMAT_INVALID = 0x99;
const pubackCode = (error: { code?: unknown }) => Number(String(error.code).replace('MQTT_PUBACK_', ''));
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

const KERNEL = Buffer.from('kernel image 1.2.0');
const AGENT = Buffer.from('agent binary 1.2.0');
const GOLDEN = {
  securityLevel: 'L1',
  digests: { '/boot/kernel.img': sha256(KERNEL), '/usr/bin/agent': sha256(AGENT) },
};

describe('posture report parsing', () => {
  const valid = { type: 'posture', firmwareVersion: '1.2.0', securityLevel: 'L2', digests: { '/a': 'a'.repeat(64) } };
  const parse = (value: unknown) => parsePostureReport(Buffer.from(JSON.stringify(value)));

  test('[DEV-10] other events are not posture reports; a posture report must be exactly well-formed', () => {
    assert.equal(parsePostureReport(Buffer.from('not json')), null);
    assert.equal(parse({ type: 'door', open: true }), null);
    assert.equal(parse([1, 2]), null);
    assert.deepEqual(parse(valid), {
      ok: true,
      report: { firmwareVersion: '1.2.0', securityLevel: 'L2', digests: { '/a': 'a'.repeat(64) } },
    });
  });

  test('[CHAN-8] an optional tls object {group, version, cipher} is parsed exactly; a malformed one refuses the report', () => {
    const negotiated = { group: 'X25519MLKEM768', version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' };
    assert.deepEqual(parse({ ...valid, tls: negotiated }), {
      ok: true,
      report: { firmwareVersion: '1.2.0', securityLevel: 'L2', digests: { '/a': 'a'.repeat(64) }, tls: negotiated },
    });
    const tls12 = { group: 'P-256', version: 'TLSv1.2', cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256' };
    assert.deepEqual(parse({ ...valid, tls: tls12 })?.ok && parse({ ...valid, tls: tls12 }), {
      ok: true,
      report: { firmwareVersion: '1.2.0', securityLevel: 'L2', digests: { '/a': 'a'.repeat(64) }, tls: tls12 },
    });
    const refused: [unknown, string][] = [
      [null, 'posture report: tls must be an object {group, version, cipher}'],
      ['X25519MLKEM768', 'posture report: tls must be an object {group, version, cipher}'],
      [[negotiated], 'posture report: tls must be an object {group, version, cipher}'],
      [{ ...negotiated, sni: 'localhost' }, 'posture report: tls: unknown field "sni"'],
      [
        { ...negotiated, group: 'P 256' },
        'posture report: tls.group must be 1-32 letters, digits, "_", "-" or "." (e.g. X25519MLKEM768, P-256)',
      ],
      [
        { ...negotiated, group: 'X'.repeat(33) },
        'posture report: tls.group must be 1-32 letters, digits, "_", "-" or "." (e.g. X25519MLKEM768, P-256)',
      ],
      [
        { version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' },
        'posture report: tls.group must be 1-32 letters, digits, "_", "-" or "." (e.g. X25519MLKEM768, P-256)',
      ],
      [{ ...negotiated, version: 'TLSv1.1' }, 'posture report: tls.version must be TLSv1.2 or TLSv1.3'],
      [{ ...negotiated, version: 'tlsv1.3' }, 'posture report: tls.version must be TLSv1.2 or TLSv1.3'],
      [{ ...negotiated, cipher: '' }, 'posture report: tls.cipher must be 1-64 letters, digits, "_" or "-"'],
      [
        { ...negotiated, cipher: 'TLS_AES_128_GCM_SHA256\n' },
        'posture report: tls.cipher must be 1-64 letters, digits, "_" or "-"',
      ],
      [{ group: 'P-256', version: 'TLSv1.3' }, 'posture report: tls.cipher must be 1-64 letters, digits, "_" or "-"'],
    ];
    for (const [value, reason] of refused) {
      assert.deepEqual(parse({ ...valid, tls: value }), { ok: false, reason }, JSON.stringify(value));
    }
  });

  test('[CHAN-8] the SDK leaves tls out when its publisher has no TLS connection to read', async () => {
    const sent: string[] = [];
    const publisher = {
      deviceId: '01' + 'a'.repeat(22),
      publish: async (_topic: string, payload: string | Buffer) => {
        sent.push(payload.toString());
      },
    };
    const report = await reportPosture(publisher, {
      firmwareVersion: '1.2.0',
      securityLevel: 'L1',
      digests: { '/a': KERNEL },
    });
    assert.equal('tls' in report, false);
    assert.equal(connectionTls(publisher), null);
    assert.equal(connectionTls({ ...publisher, negotiatedGroup: null, mqtt: { stream: undefined } }), null);
    assert.deepEqual(parsePostureReport(Buffer.from(sent[0]!)), {
      ok: true,
      report: { firmwareVersion: '1.2.0', securityLevel: 'L1', digests: { '/a': sha256(KERNEL) } },
    });
  });

  test('[CHAN-8] any tls value is parsed to exactly its three checked fields or refused (fast-check)', () => {
    const text = fc.oneof(
      fc.constantFrom('X25519MLKEM768', 'P-256', 'TLSv1.3', 'TLSv1.2', 'TLS_AES_128_GCM_SHA256', ''),
      fc.string(),
    );
    const anything = fc.oneof(text, fc.integer(), fc.constant(null), fc.boolean());
    fc.assert(
      fc.property(
        fc.oneof(
          anything,
          fc.record({ group: anything, version: anything, cipher: anything, extra: anything }, { requiredKeys: [] }),
        ),
        (value) => {
          const result = parse({ ...valid, tls: value });
          assert.ok(result !== null);
          if (!result.ok) {
            assert.match(result.reason, /^posture report: tls/);
            return;
          }
          const tls = result.report.tls!;
          assert.deepEqual(Object.keys(tls).sort(), ['cipher', 'group', 'version']);
          assert.match(tls.group, /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/);
          assert.ok(['TLSv1.2', 'TLSv1.3'].includes(tls.version));
          assert.match(tls.cipher, /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/);
        },
      ),
      { numRuns: 500 },
    );
  });

  test('[DEV-10] any JSON claiming to be a posture report is parsed or refused with a reason, never half-accepted (fast-check)', () => {
    const field = fc.oneof(
      fc.string(),
      fc.integer(),
      fc.constant(null),
      fc.boolean(),
      fc.dictionary(fc.string(), fc.string()),
    );
    fc.assert(
      fc.property(
        fc.record(
          {
            firmwareVersion: field,
            securityLevel: fc.oneof(fc.constantFrom('L1', 'L2', 'L3', 'L4', 'l1'), field),
            digests: field,
            extra: field,
          },
          { requiredKeys: [] },
        ),
        (fields) => {
          const result = parse({ type: 'posture', ...fields });
          assert.ok(result !== null);
          if (!result.ok) {
            assert.match(result.reason, /^posture report/);
            return;
          }
          assert.equal('extra' in fields, false);
          assert.match(result.report.firmwareVersion, /^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$/);
          assert.ok(['L1', 'L2', 'L3'].includes(result.report.securityLevel));
          for (const digest of Object.values(result.report.digests)) assert.match(digest, /^[0-9a-f]{64}$/);
        },
      ),
      { numRuns: 500 },
    );
  });
});

for (const dialect of await dialectCases()) {
  describe(`device posture on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    let spare: Tenant['devices'];
    const changes: DeviceChange[] = [];
    const clients: DeviceClient[] = [];
    const dir = mkdtempSync(join(tmpdir(), 'castellan-posture-'));

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 12);
      other = await provisionTenant(tp, 1, tenant.adminToken);
      spare = [...tenant.devices];
      tp.platform.deviceEvents.on('change', (c) => changes.push(c));
      const golden = await request(tp.platform, 'PUT', `/v1/products/${tenant.productId}/firmware/1.2.0/golden`, {
        token: tenant.vendorToken,
        body: GOLDEN,
      });
      assert.equal(golden.status, 200, golden.text);
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => {});
      await tp?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    const sdk = async () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      const client = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        deviceId: device.id,
        secret: device.secret,
        ca: tp.platform.caPem,
        servername: 'localhost',
      });
      clients.push(client);
      return client;
    };
    /** A device whose TLS stack offers only `groups` (a small chip): the client side's default curve list. */
    const sdkOffering = async (groups: string) => {
      const previous = tls.DEFAULT_ECDH_CURVE;
      tls.DEFAULT_ECDH_CURVE = groups;
      try {
        return await sdk();
      } finally {
        tls.DEFAULT_ECDH_CURVE = previous;
      }
    };
    const storedTls = async (deviceId: string) =>
      tp.platform.store.db
        .selectFrom('device_posture')
        .select(['tls_group', 'tls_version', 'tls_cipher'])
        .where('device_id', '=', deviceId)
        .executeTakeFirst()
        .then((row) => (row ? { ...row } : row));
    const listPostures = (query: string, token: Tenant['vendorToken'] = tenant.vendorToken) =>
      request(tp.platform, 'GET', `/v1/products/${tenant.productId}/posture${query}`, { token });
    const getPosture = (deviceId: string, token: Tenant['vendorToken'] = tenant.vendorToken) =>
      request(tp.platform, 'GET', `/v1/devices/${deviceId}/posture`, { token });
    const alertsFor = async (deviceId: string) =>
      (await tp.platform.guard.listAlerts({ tenant: tenant.vendorId, limit: 100 })).filter(
        (a) => a.target === deviceId && a.kind === 'posture-deviation',
      );
    const deviationsFor = (deviceId: string) =>
      changes.filter((c) => c.deviceId === deviceId && c.kind === 'posture.deviation');

    test('[DEV-10] golden values are set per product and firmware; other tenants and bad digests are refused', async () => {
      const read = await request(tp.platform, 'GET', `/v1/products/${tenant.productId}/firmware/1.2.0/golden`, {
        token: tenant.vendorToken,
      });
      assert.equal(read.status, 200);
      assert.deepEqual({ securityLevel: read.body.securityLevel, digests: read.body.digests }, GOLDEN);
      const unknown = await request(tp.platform, 'GET', `/v1/products/${tenant.productId}/firmware/7.0.0/golden`, {
        token: tenant.vendorToken,
      });
      assert.equal(unknown.body.error.code, 'ERR_FIRMWARE_GOLDEN_NOT_FOUND');
      const foreign = await request(tp.platform, 'PUT', `/v1/products/${tenant.productId}/firmware/1.2.0/golden`, {
        token: other.vendorToken,
        body: { securityLevel: 'L1', digests: { '/boot/kernel.img': sha256('evil') } },
      });
      assert.equal(foreign.status, 404);
      assert.equal(foreign.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      for (const digests of [{ '/x': 'ABC' }, { '/x': 'A'.repeat(64) }, {}, { '/x\u0001': sha256('x') }]) {
        const bad = await request(tp.platform, 'PUT', `/v1/products/${tenant.productId}/firmware/1.3.0/golden`, {
          token: tenant.vendorToken,
          body: { securityLevel: 'L1', digests },
        });
        assert.equal(bad.status, 400, JSON.stringify(digests));
        assert.equal(bad.body.error.code, 'ERR_VALIDATION_FAILED');
      }
      const still = await request(tp.platform, 'GET', `/v1/products/${tenant.productId}/firmware/1.2.0/golden`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(still.body.digests, GOLDEN.digests, 'the other tenant changed nothing');
    });

    test('[DEV-10] a report matching the golden values raises no alert', async () => {
      const device = await sdk();
      const none = await getPosture(device.deviceId);
      assert.equal(none.status, 404);
      assert.equal(none.body.error.code, 'ERR_POSTURE_NOT_FOUND');
      // Core files hashed by the SDK from a file on disk and from bytes.
      const kernelFile = join(dir, 'kernel.img');
      writeFileSync(kernelFile, KERNEL);
      const sent = await device.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': { file: kernelFile }, '/usr/bin/agent': AGENT },
      });
      assert.deepEqual(sent.digests, GOLDEN.digests);
      assert.equal(sent.tls?.group, 'X25519MLKEM768');
      const posture = await getPosture(device.deviceId);
      assert.equal(posture.status, 200, posture.text);
      assert.deepEqual(
        { reported: posture.body.reported, deviations: posture.body.deviations, compliant: posture.body.compliant },
        { reported: { firmwareVersion: '1.2.0', ...GOLDEN, tls: sent.tls }, deviations: [], compliant: true },
      );
      assert.deepEqual(posture.body.golden.digests, GOLDEN.digests);
      assert.deepEqual(await alertsFor(device.deviceId), []);
      assert.deepEqual(deviationsFor(device.deviceId), []);
      const foreign = await getPosture(device.deviceId, other.vendorToken);
      assert.equal(foreign.body.error.code, 'ERR_DEVICE_NOT_FOUND');
    });

    test('[DEV-10] a tampered core file raises an alert naming its path, an audit entry and a change; once', async () => {
      const device = await sdk();
      const tampered = {
        firmwareVersion: '1.2.0',
        securityLevel: 'L1' as const,
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': Buffer.from('agent binary 1.2.0 + backdoor') },
      };
      await device.reportPosture(tampered);
      const [alert, ...more] = await alertsFor(device.deviceId);
      assert.ok(alert, 'an alert');
      assert.equal(more.length, 0);
      assert.equal(alert.response, 'alert-only');
      assert.deepEqual(alert.details.deviations, [{ kind: 'digest-mismatch', path: '/usr/bin/agent' }]);
      assert.equal(alert.details.firmwareVersion, '1.2.0');
      const [change] = deviationsFor(device.deviceId);
      assert.deepEqual(change?.data.deviations, [{ kind: 'digest-mismatch', path: '/usr/bin/agent' }]);
      assert.equal(change?.data.alertId, alert.id);
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({
        type: 'device.posture-deviation',
        target: device.deviceId,
        limit: 5,
      });
      assert.equal(audited.length, 1);
      assert.equal(audited[0]!.details.alertId, alert.id);
      const posture = await getPosture(device.deviceId);
      assert.deepEqual([posture.body.compliant, posture.body.deviations], [false, alert.details.deviations]);
      // [IDS-2] the deviation weighs on the device's risk score.
      const risk = await request(tp.platform, 'GET', `/v1/devices/${device.deviceId}/risk`, {
        token: tenant.vendorToken,
      });
      assert.ok(
        risk.body.factors.some((f: { kind: string }) => f.kind === 'posture-deviation'),
        JSON.stringify(risk.body),
      );
      // The same findings again: no new alert. Back in line: a posture.compliant change.
      await device.reportPosture(tampered);
      assert.equal((await alertsFor(device.deviceId)).length, 1);
      await device.reportPosture({ ...tampered, digests: { ...tampered.digests, '/usr/bin/agent': AGENT } });
      assert.equal((await getPosture(device.deviceId)).body.compliant, true);
      assert.ok(changes.some((c) => c.deviceId === device.deviceId && c.kind === 'posture.compliant'));
      assert.equal((await alertsFor(device.deviceId)).length, 1);
    });

    test('[DEV-10] unknown firmware, a missing core file and a lower security level each raise an alert', async () => {
      const unknownFirmware = await sdk();
      await unknownFirmware.reportPosture({
        firmwareVersion: '9.9.9-evil',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      const [unknownAlert] = await alertsFor(unknownFirmware.deviceId);
      assert.deepEqual(unknownAlert?.details.deviations, [{ kind: 'unknown-firmware', firmwareVersion: '9.9.9-evil' }]);
      assert.equal((await getPosture(unknownFirmware.deviceId)).body.golden, null);

      const missing = await sdk();
      await missing.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL },
      });
      const [missingAlert] = await alertsFor(missing.deviceId);
      assert.deepEqual(missingAlert?.details.deviations, [{ kind: 'missing-file', path: '/usr/bin/agent' }]);

      // The product requires L2 (set straight in the store, as the products API would).
      await tp.platform.store.db
        .updateTable('products')
        .set({ security_level: 'L2' })
        .where('id', '=', tenant.productId)
        .execute();
      const weak = await sdk();
      await weak.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      const [levelAlert] = await alertsFor(weak.deviceId);
      assert.deepEqual(levelAlert?.details.deviations, [{ kind: 'security-level', reported: 'L1', required: 'L2' }]);
      await tp.platform.store.db
        .updateTable('products')
        .set({ security_level: 'L1' })
        .where('id', '=', tenant.productId)
        .execute();
    });

    test('[DEV-10] a malformed posture report is refused with PUBACK 0x99 and stores nothing', async () => {
      const device = await sdk();
      await device.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      const before = (await getPosture(device.deviceId)).body;
      const good = { type: 'posture', firmwareVersion: '1.2.0', securityLevel: 'L1', digests: GOLDEN.digests };
      const malformed: unknown[] = [
        { ...good, extra: true },
        { ...good, securityLevel: 'L4' },
        { ...good, firmwareVersion: '1.2.0 beta' },
        { ...good, firmwareVersion: 120 },
        { ...good, digests: {} },
        { ...good, digests: [GOLDEN.digests['/boot/kernel.img']] },
        { ...good, digests: { '/boot/kernel.img': GOLDEN.digests['/boot/kernel.img'].toUpperCase() } },
        { ...good, digests: { '/boot/kernel.img': 'deadbeef' } },
        { type: 'posture', firmwareVersion: '1.2.0', securityLevel: 'L1' },
      ];
      for (const report of malformed) {
        await assert.rejects(
          device.publish(`devices/${device.deviceId}/events`, JSON.stringify(report), 1),
          (error: DeviceConnectError) => pubackCode(error) === PAYLOAD_FORMAT_INVALID,
          JSON.stringify(report),
        );
      }
      const afterwards = (await getPosture(device.deviceId)).body;
      assert.deepEqual(afterwards, before, 'the stored posture is unchanged');
      assert.deepEqual(await alertsFor(device.deviceId), []);
      // Other events on the same topic pass untouched; the SDK refuses a malformed digest itself.
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'door', open: true }), 1);
      await assert.rejects(
        device.reportPosture({ firmwareVersion: '1.2.0', securityLevel: 'L1', digests: { '/x': { sha256: 'nope' } } }),
        TypeError,
      );
    });

    test('[CHAN-8] a device connecting with the default groups reports X25519MLKEM768; the platform stores and shows it', async () => {
      const device = await sdk();
      assert.equal(device.negotiatedGroup, 'X25519MLKEM768');
      const sent = await device.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      // The SDK filled `tls` from the live connection: TLS 1.3, the IANA name of its cipher suite.
      assert.deepEqual(sent.tls, { group: 'X25519MLKEM768', version: 'TLSv1.3', cipher: sent.tls?.cipher });
      assert.match(sent.tls.cipher, /^TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/);
      const posture = await getPosture(device.deviceId);
      assert.equal(posture.status, 200, posture.text);
      assert.deepEqual(posture.body.reported.tls, sent.tls);
      assert.deepEqual([posture.body.compliant, posture.body.deviations], [true, []]);
      assert.deepEqual(await storedTls(device.deviceId), {
        tls_group: 'X25519MLKEM768',
        tls_version: 'TLSv1.3',
        tls_cipher: sent.tls.cipher,
      });
      const listed = await listPostures('?postQuantum=true');
      assert.equal(listed.status, 200, listed.text);
      const item = listed.body.items.find((i: { deviceId: string }) => i.deviceId === device.deviceId);
      assert.deepEqual(item?.reported.tls, sent.tls);
      assert.equal(item?.postQuantum, true);
    });

    test('[CHAN-8] a device forced to classical-only (P-256) reports P-256; vendors find it with postQuantum=false', async () => {
      const hybrid = await sdk();
      await hybrid.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL },
      });
      const classical = await sdkOffering('P-256');
      assert.equal(classical.negotiatedGroup, 'P-256');
      const sent = await classical.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      assert.equal(sent.tls?.group, 'P-256');
      assert.equal(sent.tls?.version, 'TLSv1.3');
      const posture = await getPosture(classical.deviceId);
      assert.deepEqual(posture.body.reported.tls, sent.tls);
      // An L1 product does not ask for a post-quantum key exchange: compliant.
      assert.deepEqual([posture.body.compliant, posture.body.deviations], [true, []]);
      assert.equal((await storedTls(classical.deviceId))?.tls_group, 'P-256');

      const ids = (body: { items: { deviceId: string }[] }) => body.items.map((i) => i.deviceId);
      const notYet = await listPostures('?postQuantum=false');
      assert.equal(notYet.status, 200, notYet.text);
      assert.ok(ids(notYet.body).includes(classical.deviceId));
      assert.ok(!ids(notYet.body).includes(hybrid.deviceId));
      for (const item of notYet.body.items) {
        assert.equal(item.postQuantum, false);
        assert.notEqual(item.reported.tls?.group, 'X25519MLKEM768');
      }
      const pq = await listPostures('?postQuantum=true');
      assert.ok(ids(pq.body).includes(hybrid.deviceId));
      assert.ok(!ids(pq.body).includes(classical.deviceId));
      const byGroup = await listPostures('?tlsGroup=P-256');
      assert.deepEqual(ids(byGroup.body), [classical.deviceId]);
      assert.equal(byGroup.body.next, null);
      // Paging by device ID, one at a time, walks every posture once.
      const all = ids((await listPostures('?limit=1000')).body);
      assert.deepEqual(all, [...all].sort());
      const paged: string[] = [];
      for (let after = ''; ;) {
        const page = await listPostures(`?limit=2${after ? `&after=${after}` : ''}`);
        paged.push(...ids(page.body));
        if (page.body.next === null) break;
        after = page.body.next;
      }
      assert.deepEqual(paged, all);
      const bad = await listPostures('?tlsGroup=P%20256');
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'ERR_VALIDATION_FAILED');
      const foreign = await listPostures('?postQuantum=false', other.vendorToken);
      assert.equal(foreign.status, 404);
      assert.equal(foreign.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
    });

    test('[CHAN-8] at level L3 a classical key exchange is a deviation naming the group; the hybrid group is not', async () => {
      await tp.platform.store.db
        .updateTable('products')
        .set({ security_level: 'L3' })
        .where('id', '=', tenant.productId)
        .execute();
      try {
        const report = {
          firmwareVersion: '1.2.0',
          securityLevel: 'L3' as const,
          digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
        };
        const classical = await sdkOffering('X25519');
        await classical.reportPosture(report);
        const [alert, ...more] = await alertsFor(classical.deviceId);
        assert.equal(more.length, 0);
        assert.deepEqual(alert?.details.deviations, [
          { kind: 'classical-key-exchange', group: 'X25519', required: 'L3' },
        ]);
        const posture = await getPosture(classical.deviceId);
        assert.deepEqual(posture.body.deviations, alert?.details.deviations);
        assert.equal(posture.body.compliant, false);
        const hybrid = await sdk();
        await hybrid.reportPosture(report);
        assert.deepEqual(await alertsFor(hybrid.deviceId), []);
        assert.equal((await getPosture(hybrid.deviceId)).body.compliant, true);
      } finally {
        await tp.platform.store.db
          .updateTable('products')
          .set({ security_level: 'L1' })
          .where('id', '=', tenant.productId)
          .execute();
      }
    });

    test('[CHAN-8] a report with a malformed tls object is refused with PUBACK 0x99 and stores nothing', async () => {
      const device = await sdk();
      const sent = await device.reportPosture({
        firmwareVersion: '1.2.0',
        securityLevel: 'L1',
        digests: { '/boot/kernel.img': KERNEL, '/usr/bin/agent': AGENT },
      });
      const before = (await getPosture(device.deviceId)).body;
      const storedBefore = await storedTls(device.deviceId);
      assert.equal(storedBefore?.tls_group, 'X25519MLKEM768');
      const good = { type: 'posture', firmwareVersion: '1.2.0', securityLevel: 'L1', digests: GOLDEN.digests };
      const malformed: unknown[] = [
        { ...good, tls: null },
        { ...good, tls: 'X25519MLKEM768' },
        { ...good, tls: { ...sent.tls, group: 'P 256' } },
        { ...good, tls: { ...sent.tls, group: 'G'.repeat(33) } },
        { ...good, tls: { ...sent.tls, version: 'TLSv1.1' } },
        { ...good, tls: { ...sent.tls, cipher: 'TLS AES' } },
        { ...good, tls: { group: 'P-256', version: 'TLSv1.3' } },
        { ...good, tls: { ...sent.tls, resumed: false } },
      ];
      for (const report of malformed) {
        await assert.rejects(
          device.publish(`devices/${device.deviceId}/events`, JSON.stringify(report), 1),
          (error: DeviceConnectError) => pubackCode(error) === PAYLOAD_FORMAT_INVALID,
          JSON.stringify(report),
        );
      }
      assert.deepEqual((await getPosture(device.deviceId)).body, before, 'the stored posture is unchanged');
      assert.deepEqual(await storedTls(device.deviceId), storedBefore);
      assert.deepEqual(await alertsFor(device.deviceId), []);
    });
  });
}

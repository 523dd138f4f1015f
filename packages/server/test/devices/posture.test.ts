// Device posture (DEV-10) on both databases, devices through the SDK (DeviceClient.reportPosture):
// golden values per product and firmware version; a matching report raises nothing; a tampered digest,
// a missing core file, an unknown firmware version or a lower security level raise a guard alert
// naming the finding, an audit entry and a `posture.deviation` change (and weigh on the device's risk
// score, IDS-2); a malformed report is refused with PUBACK 0x99 and stores nothing.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceClient, type DeviceConnectError } from '@castellan/device';
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
      tenant = await provisionTenant(tp, 8);
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
      const posture = await getPosture(device.deviceId);
      assert.equal(posture.status, 200, posture.text);
      assert.deepEqual(
        { reported: posture.body.reported, deviations: posture.body.deviations, compliant: posture.body.compliant },
        { reported: { firmwareVersion: '1.2.0', ...GOLDEN }, deviations: [], compliant: true },
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
  });
}

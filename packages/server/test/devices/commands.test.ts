// Commands (CHAN-7) and the built-in reboot, factory reset and wipe (DEV-9) on both databases, devices
// through the SDK (DeviceClient): delivery and acknowledgement with a result, long polling, failures
// and rejections, timeouts at the deadline (also after a restart: the deadline is in the database),
// acknowledgements from the wrong device, of the wrong shape, unknown, duplicate or late, offline
// devices, limits, who may send what (BIND-2), and the audit trail with parameter keys only.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DeviceClient } from '@castellan/device';
import { CommandRejectedError } from '@castellan/device';
import type { MqttClient } from 'mqtt';
import type { DeviceChange } from '../../src/devices/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, shareDevice, sdkDevice } from '../helpers/device-flows.ts';
import { connectDevice, endClient, publishOutcome, subscribeOutcome } from '../helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const PAYLOAD_FORMAT_INVALID = 0x99;
const NOT_AUTHORIZED = 0x87;
type Token = Tenant['vendorToken'] | string;

for (const dialect of await dialectCases()) {
  describe(`device commands on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let spare: Tenant['devices'];
    const changes: DeviceChange[] = [];
    const clients: DeviceClient[] = [];
    const raws: MqttClient[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 60 } });
      tenant = await provisionTenant(tp, 18);
      spare = [...tenant.devices];
      tp.platform.deviceEvents.on('change', (c) => changes.push(c));
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => {});
      for (const raw of raws) raw.end(true);
      await tp?.close();
    });

    const nextDevice = () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };
    const sdk = (device: { id: string; secret: string }, protocolVersion: 4 | 5 = 5) =>
      sdkDevice(tp, device, clients, protocolVersion);
    /** A raw device connection that receives its commands and never acknowledges on its own. */
    const silentDevice = async (device: { id: string; secret: string }) => {
      const client = await connectDevice(tp.platform, device, 5);
      raws.push(client);
      const received: Array<{ id: string; name: string; params: unknown; expiresAt: number }> = [];
      client.on('message', (topic, payload) => {
        if (topic.startsWith(`devices/${device.id}/commands/`)) received.push(JSON.parse(payload.toString('utf8')));
      });
      assert.deepEqual(await subscribeOutcome(client, [`devices/${device.id}/commands/#`]), [1]);
      return { client, received };
    };
    const send = (deviceId: string, body: unknown, token: Token = tenant.vendorToken) =>
      request(tp.platform, 'POST', `/v1/devices/${deviceId}/commands`, { token, body });
    const read = (deviceId: string, commandId: string, token: Token = tenant.vendorToken, wait = false) =>
      request(tp.platform, 'GET', `/v1/devices/${deviceId}/commands/${commandId}${wait ? '?wait=true' : ''}`, {
        token,
      });
    const statusInDb = async (commandId: string) =>
      (await tp.query<{ status: string }>('select status from device_commands where id = $1', [commandId]))[0]?.status;
    const until = async (check: () => Promise<boolean> | boolean, what: string, ms = 5000) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (await check()) return;
        await sleep(25);
      }
      assert.fail(`timed out waiting for ${what}`);
    };

    test('[CHAN-7] a command is delivered, acknowledged with a result, and audited with parameter keys only', async () => {
      const device = nextDevice();
      const client = await sdk(device);
      const handled: Array<{ name: string; params: unknown }> = [];
      await client.onCommand('set-scene', async (command) => {
        handled.push({ name: command.name, params: command.params });
        await sleep(300);
        return { applied: command.params.scene, at: 7 };
      });
      const started = Date.now();
      const sent = await send(device.id, {
        name: 'set-scene',
        params: { scene: 'evening', guestName: 'Alice Example' },
        timeoutSeconds: 10,
      });
      assert.equal(sent.status, 202, sent.text);
      assert.match(sent.body.id, /^cmd_[A-Za-z0-9_-]{22}$/);
      assert.equal(sent.body.status, 'delivered');
      assert.equal(sent.body.issuedBy, 'operator');
      assert.equal(sent.body.expiresAt - sent.body.issuedAt, 10_000);

      // Long poll: answers when the device acknowledged, not at the deadline.
      const done = await read(device.id, sent.body.id, tenant.vendorToken, true);
      assert.equal(done.status, 200, done.text);
      assert.ok(Date.now() - started < 5000, 'answered at the acknowledgement');
      assert.equal(done.body.status, 'succeeded');
      assert.deepEqual(done.body.result, { applied: 'evening', at: 7 });
      assert.equal(done.body.error, null);
      assert.ok(done.body.completedAt >= done.body.deliveredAt);
      assert.deepEqual(handled, [{ name: 'set-scene', params: { scene: 'evening', guestName: 'Alice Example' } }]);

      const history = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(
        history.body.items.map((c: { id: string; status: string }) => [c.id, c.status]),
        [[sent.body.id, 'succeeded']],
      );
      assert.deepEqual(
        changes.filter((c) => c.kind === 'command.status' && c.deviceId === device.id).map((c) => c.data.status),
        ['delivered', 'succeeded'],
      );

      await tp.platform.audit.flush();
      const [issue] = await tp.platform.audit.query({ type: 'device.command.issue', target: device.id, limit: 5 });
      assert.equal(issue?.actor.type, 'operator');
      assert.equal(issue?.tenant, tenant.vendorId);
      assert.deepEqual(
        { ...issue?.details, requestId: undefined, credentialId: undefined },
        {
          commandId: sent.body.id,
          name: 'set-scene',
          builtin: false,
          paramKeys: ['scene', 'guestName'],
          timeoutSeconds: 10,
          requestId: undefined,
          credentialId: undefined,
        },
      );
      const [result] = await tp.platform.audit.query({ type: 'device.command.result', target: device.id, limit: 5 });
      assert.deepEqual(result?.actor, { type: 'device', id: device.id });
      assert.equal(result?.result, 'success');
      assert.deepEqual(result?.details, {
        commandId: sent.body.id,
        name: 'set-scene',
        builtin: false,
        status: 'succeeded',
      });
      for (const entry of [issue, result]) {
        assert.ok(!JSON.stringify(entry).includes('Alice'), 'no parameter values in the audit log');
        assert.ok(!JSON.stringify(entry).includes('evening'), 'no parameter values in the audit log');
      }
    });

    test('[CHAN-7] POST ?wait=true answers with the outcome in one request, or with timed-out at the deadline', async () => {
      const device = nextDevice();
      const client = await sdk(device);
      await client.onCommand('set-scene', async (command) => ({ applied: command.params.scene }));
      const path = `/v1/devices/${device.id}/commands?wait=true`;
      const done = await request(tp.platform, 'POST', path, {
        token: tenant.vendorToken,
        body: { name: 'set-scene', params: { scene: 'night' }, timeoutSeconds: 10 },
      });
      assert.equal(done.status, 200, done.text);
      assert.equal(done.body.status, 'succeeded');
      assert.deepEqual(done.body.result, { applied: 'night' });
      assert.equal(await statusInDb(done.body.id), 'succeeded');

      // A device that never acknowledges: the answer comes at the deadline, as the command's end.
      const silent = nextDevice();
      const { received } = await silentDevice(silent);
      const started = Date.now();
      const late = await request(tp.platform, 'POST', `/v1/devices/${silent.id}/commands?wait=true`, {
        token: tenant.vendorToken,
        body: { name: 'set-scene', params: { scene: 'x' }, timeoutSeconds: 1 },
      });
      assert.equal(late.status, 200, late.text);
      assert.equal(late.body.status, 'timed-out');
      assert.ok(Date.now() - started >= 900, 'answered at the deadline, not before');
      assert.equal(received.length, 1, 'the device got the command');

      // wait must be a boolean: refused before anything is stored or sent.
      const bad = await request(tp.platform, 'POST', `/v1/devices/${device.id}/commands?wait=soon`, {
        token: tenant.vendorToken,
        body: { name: 'set-scene', params: { scene: 'y' } },
      });
      assert.equal(bad.status, 400, bad.text);
      assert.equal(bad.body.error.code, 'ERR_VALIDATION_FAILED');
      assert.equal(bad.body.error.message, 'querystring/wait must be boolean');
      const history = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
      });
      assert.equal(history.body.items.length, 1, 'the refused request stored no command');
    });

    test('[CHAN-7] a handler that throws acknowledges failed; an unknown name or a refusal acknowledges rejected', async () => {
      const device = nextDevice();
      const client = await sdk(device);
      await client.onCommand('calibrate', () => {
        throw new Error('sensor not ready');
      });
      await client.onCommand('unlock', () => {
        throw new CommandRejectedError('child lock is on');
      });
      const outcomes: Array<[string, string, string | null]> = [];
      for (const name of ['calibrate', 'unlock', 'self-destruct']) {
        const sent = await send(device.id, { name });
        assert.equal(sent.status, 202, sent.text);
        const done = await read(device.id, sent.body.id, tenant.vendorToken, true);
        outcomes.push([name, done.body.status, done.body.error]);
      }
      assert.deepEqual(outcomes, [
        ['calibrate', 'failed', 'sensor not ready'],
        ['unlock', 'rejected', 'child lock is on'],
        ['self-destruct', 'rejected', 'unknown command: self-destruct'],
      ]);
      await tp.platform.audit.flush();
      const results = await tp.platform.audit.query({ type: 'device.command.result', target: device.id, limit: 5 });
      assert.deepEqual(results.map((e) => e.result).sort(), ['denied', 'denied', 'failure']);
    });

    test('[CHAN-7] a device that never acknowledges: timed out at the deadline, and a late acknowledgement changes nothing', async () => {
      const device = nextDevice();
      const { client, received } = await silentDevice(device);
      const sent = await send(device.id, { name: 'open-valve', params: { percent: 30 }, timeoutSeconds: 1 });
      assert.equal(sent.status, 202, sent.text);
      await until(() => received.length === 1, 'the command to arrive');
      assert.deepEqual(received[0], {
        id: sent.body.id,
        name: 'open-valve',
        params: { percent: 30 },
        issuedAt: sent.body.issuedAt,
        expiresAt: sent.body.expiresAt,
      });
      assert.equal((await read(device.id, sent.body.id)).body.status, 'delivered');
      // The sweep stores the timeout by itself (no read needed) shortly after the deadline.
      await until(async () => (await statusInDb(sent.body.id)) === 'timed-out', 'the timeout sweep', 3000);
      const timedOutAt = Date.now();
      assert.ok(timedOutAt >= sent.body.expiresAt, 'not before the deadline');
      assert.ok(
        timedOutAt - sent.body.expiresAt < 2500,
        `within the sweep interval (${timedOutAt - sent.body.expiresAt} ms)`,
      );
      const done = await read(device.id, sent.body.id);
      assert.equal(done.body.status, 'timed-out');
      assert.equal(done.body.result, null);

      const late = tp.platform.commands.stats.acksDuplicate;
      assert.equal(
        await publishOutcome(client, `devices/${device.id}/acks/${sent.body.id}`, '{"status":"succeeded"}', 1),
        0,
        'accepted and ignored',
      );
      assert.equal(tp.platform.commands.stats.acksDuplicate, late + 1);
      assert.equal((await read(device.id, sent.body.id)).body.status, 'timed-out');
      await tp.platform.audit.flush();
      const [result] = await tp.platform.audit.query({ type: 'device.command.result', target: device.id, limit: 5 });
      assert.deepEqual(result?.actor, { type: 'system', id: 'commands' });
      assert.equal(result?.details.status, 'timed-out');
    });

    test('[CHAN-7] acknowledgements: another device is not authorised, a wrong shape is refused with 0x99, unknown and duplicates are ignored', async () => {
      const [target, other] = [nextDevice(), nextDevice()];
      const { client, received } = await silentDevice(target);
      const intruder = await connectDevice(tp.platform, other, 5);
      raws.push(intruder);
      const sent = await send(target.id, { name: 'beep', timeoutSeconds: 60 });
      await until(() => received.length === 1, 'the command to arrive');
      const ackTopic = `devices/${target.id}/acks/${sent.body.id}`;
      const stats = { ...tp.platform.commands.stats };

      // Another device cannot publish under this device's topics at all (CHAN-6 ACL).
      assert.equal(await publishOutcome(intruder, ackTopic, '{"status":"succeeded"}', 1), NOT_AUTHORIZED);
      // On its own acks topic, the command ID is not one of its commands: accepted, ignored, counted.
      assert.equal(
        await publishOutcome(intruder, `devices/${other.id}/acks/${sent.body.id}`, '{"status":"failed"}', 1),
        0,
      );
      assert.equal(
        await publishOutcome(client, `devices/${target.id}/acks/cmd_nonexistent`, '{"status":"failed"}', 1),
        0,
      );
      assert.equal(tp.platform.commands.stats.acksUnknown, stats.acksUnknown + 2);
      // The addressed device, but a malformed acknowledgement: 0x99, nothing changes.
      for (const payload of [
        'not json',
        '{"status":"done"}',
        '{"status":"succeeded","extra":1}',
        '{"status":"failed","error":42}',
        JSON.stringify({ status: 'succeeded', result: { a: { b: { c: { d: { e: 1 } } } } } }),
        JSON.stringify({ status: 'succeeded', result: 'r'.repeat(9000) }),
      ]) {
        assert.equal(await publishOutcome(client, ackTopic, payload, 1), PAYLOAD_FORMAT_INVALID, payload.slice(0, 40));
      }
      assert.equal(tp.platform.commands.stats.acksRefused, stats.acksRefused + 6);
      assert.equal((await read(target.id, sent.body.id)).body.status, 'delivered');
      assert.equal(await statusInDb(sent.body.id), 'delivered');

      assert.equal(await publishOutcome(client, ackTopic, '{"status":"succeeded","result":[1,2,3]}', 1), 0);
      assert.equal(await publishOutcome(client, ackTopic, '{"status":"failed","error":"again"}', 1), 0);
      const done = await read(target.id, sent.body.id);
      assert.equal(done.body.status, 'succeeded', 'the first acknowledgement stands');
      assert.deepEqual(done.body.result, [1, 2, 3]);
      assert.equal(tp.platform.commands.stats.acksDuplicate, stats.acksDuplicate + 1);

      // MQTT 3.1.1: a malformed acknowledgement closes the connection, the command stays open.
      const second = await send(target.id, { name: 'beep', timeoutSeconds: 60 });
      const old = await connectDevice(tp.platform, target, 4);
      raws.push(old);
      assert.equal(
        await publishOutcome(old, `devices/${target.id}/acks/${second.body.id}`, '{"status":1}', 1),
        'closed',
      );
      assert.equal(await statusInDb(second.body.id), 'delivered');
    });

    test('[CHAN-7] refused commands: offline device, bad names, parameters, timeouts, too many open', async () => {
      const device = nextDevice();
      const offline = await send(device.id, { name: 'beep' });
      assert.equal(offline.status, 409, offline.text);
      assert.equal(offline.body.error.code, 'ERR_DEVICE_OFFLINE');
      assert.equal(offline.body.error.message, 'The device is not connected');
      await silentDevice(device);
      const refusals: Array<[unknown, string, string]> = [
        [{ name: 'a/b' }, 'ERR_VALIDATION_FAILED', 'body/name must match pattern "^[A-Za-z][A-Za-z0-9_.-]{0,63}$"'],
        [{ name: '#' }, 'ERR_VALIDATION_FAILED', 'body/name must match pattern "^[A-Za-z][A-Za-z0-9_.-]{0,63}$"'],
        [{ name: 'beep', timeoutSeconds: 0 }, 'ERR_VALIDATION_FAILED', 'body/timeoutSeconds must be >= 1'],
        [{ name: 'beep', timeoutSeconds: 301 }, 'ERR_VALIDATION_FAILED', 'body/timeoutSeconds must be <= 300'],
        [
          { name: 'beep', params: { a: { b: { c: { d: { e: 1 } } } } } },
          'ERR_COMMAND_INVALID',
          'params a.b.c.d nests deeper than 4 levels',
        ],
        [
          { name: 'beep', params: { big: 'x'.repeat(9000) } },
          'ERR_COMMAND_INVALID',
          'params is 9010 bytes; at most 8192 are allowed',
        ],
        [{ name: 'reboot', params: { force: true } }, 'ERR_COMMAND_INVALID', 'reboot takes only delaySeconds'],
        [
          { name: 'reboot', params: { delaySeconds: 7200 } },
          'ERR_COMMAND_INVALID',
          'delaySeconds must be an integer from 0 to 3600',
        ],
        [{ name: 'wipe', params: { keep: 'logs' } }, 'ERR_COMMAND_INVALID', 'wipe takes no parameters'],
      ];
      for (const [body, code, message] of refusals) {
        const res = await send(device.id, body);
        assert.equal(res.status, 400, `${JSON.stringify(body).slice(0, 60)}: ${res.text}`);
        assert.equal(res.body.error.code, code);
        assert.equal(res.body.error.message, message);
      }
      assert.deepEqual(await tp.query('select id from device_commands where device_id = $1', [device.id]), []);

      for (let i = 0; i < 16; i++)
        assert.equal((await send(device.id, { name: 'beep', timeoutSeconds: 300 })).status, 202);
      const full = await send(device.id, { name: 'beep' });
      assert.equal(full.status, 429, full.text);
      assert.equal(full.body.error.code, 'ERR_COMMAND_LIMIT');
      assert.equal(full.body.error.message, 'This device already has 16 commands waiting for an acknowledgement');

      // History pages newest first.
      const first = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands?limit=10`, {
        token: tenant.vendorToken,
      });
      const rest = await request(
        tp.platform,
        'GET',
        `/v1/devices/${device.id}/commands?limit=10&before=${first.body.next}`,
        {
          token: tenant.vendorToken,
        },
      );
      assert.equal(first.body.items.length, 10);
      assert.equal(rest.body.items.length, 6);
      assert.equal(rest.body.next, null);
      const ids = [...first.body.items, ...rest.body.items].map((c: { id: string }) => c.id);
      assert.equal(new Set(ids).size, 16);
      const issued = [...first.body.items, ...rest.body.items].map((c: { issuedAt: number }) => c.issuedAt);
      assert.deepEqual(
        issued,
        [...issued].sort((a, b) => b - a),
      );
    });

    test('[CHAN-7] custom commands are checked against the product data points; built-ins are not', async () => {
      const other = await provisionTenant(tp, 1, tenant.adminToken);
      await tp.platform.devices.updateProduct(other.productId, {
        dataPoints: {
          properties: [],
          commands: [{ code: 'set_speed', params: [{ code: 'rpm', type: 'integer', min: 0, max: 3000 }] }],
          events: [],
        },
      });
      const device = other.devices[0]!;
      await silentDevice(device);
      const post = (body: unknown) => send(device.id, body, other.vendorToken);
      assert.equal((await post({ name: 'set_speed', params: { rpm: 1200 } })).status, 202);
      for (const body of [{ name: 'set_speed', params: { rpm: 5000 } }, { name: 'turbo' }]) {
        const res = await post(body);
        assert.equal(res.status, 400, JSON.stringify(body));
        assert.equal(res.body.error.code, 'ERR_COMMAND_INVALID');
        assert.match(res.body.error.message, /^The command does not fit the product's data points: /);
      }
      assert.equal((await post({ name: 'reboot' })).status, 202, 'built-ins are the platform’s (DEV-9)');
    });

    test('[DEV-9] reboot, wipe and factory reset: only the owner or the vendor; acknowledged, audited, and a reset unbinds and clears the shadow', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const admin = await shareDevice(tp, owner.userToken, device.id, 'admin');
      const member = await shareDevice(tp, owner.userToken, device.id, 'member');
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      const client = await sdk(device);
      const hooks: string[] = [];
      await client.useBuiltinCommands({
        onReboot: () => {
          hooks.push('reboot');
        },
        onRebooted: (error) => {
          hooks.push(error === undefined ? 'rebooted' : 'reboot failed');
        },
        onWipe: () => {
          hooks.push('wipe');
        },
        onFactoryReset: () => {
          hooks.push('factory-reset');
        },
      });
      await client.reportState({ occupied: true });
      await request(tp.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
        token: owner.userToken,
        body: { state: { away: false } },
      });

      // Shared users never send a built-in (not even an admin share); nothing reaches the device.
      for (const [who, token] of [
        ['admin', admin.userToken],
        ['member', member.userToken],
        ['guest', guest.userToken],
      ] as const) {
        for (const name of ['reboot', 'factory-reset', 'wipe']) {
          const res = await send(device.id, { name }, token);
          assert.equal(res.status, 404, `${who} ${name}`);
          assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
        }
      }
      // A member may send ordinary commands (this device rejects the unknown name); a guest may not.
      const ping = await send(device.id, { name: 'ping' }, member.userToken);
      assert.equal(ping.status, 202, ping.text);
      assert.equal((await read(device.id, ping.body.id, guest.userToken, true)).body.status, 'rejected');
      assert.equal((await send(device.id, { name: 'ping' }, guest.userToken)).status, 404);
      assert.equal(hooks.length, 0, 'nothing reached the device');

      // The vendor reboots: acknowledged, then the device reconnects and still receives commands.
      const connects = () => tp.platform.audit.query({ type: 'device.connect', target: device.id, limit: 50 });
      await tp.platform.audit.flush();
      const connectsBefore = (await connects()).filter((e) => e.result === 'success').length;
      const reboot = await send(device.id, { name: 'reboot', params: { delaySeconds: 0 } });
      assert.equal(reboot.status, 202, reboot.text);
      const rebooted = await read(device.id, reboot.body.id, tenant.vendorToken, true);
      assert.equal(rebooted.body.status, 'succeeded');
      assert.deepEqual(rebooted.body.result, { rebooting: true });
      await until(async () => {
        await tp.platform.audit.flush();
        return (await connects()).filter((e) => e.result === 'success').length === connectsBefore + 1;
      }, 'the device to reconnect');
      await until(() => hooks.includes('rebooted'), 'the device to be back with its subscriptions');
      assert.ok(tp.platform.broker.isConnected(device.id));

      // The owner wipes, then resets.
      const wipe = await send(device.id, { name: 'wipe' }, owner.userToken);
      assert.equal(wipe.status, 202, wipe.text);
      assert.equal((await read(device.id, wipe.body.id, owner.userToken, true)).body.status, 'succeeded');
      assert.deepEqual(hooks, ['reboot', 'rebooted', 'wipe']);
      assert.deepEqual(client.shadow.reported, {}, 'the SDK forgot its local state');

      const reset = await send(device.id, { name: 'factory-reset' }, owner.userToken);
      assert.equal(reset.status, 202, reset.text);
      const resetDone = await read(device.id, reset.body.id, owner.userToken, true);
      // The owner waited with access; the reset ends that access as it succeeds.
      assert.ok(resetDone.status === 200 || resetDone.status === 404, resetDone.text);
      await until(async () => (await statusInDb(reset.body.id)) === 'succeeded', 'the reset');
      assert.deepEqual(hooks, ['reboot', 'rebooted', 'wipe', 'factory-reset']);
      // Unbound: the previous owner and the shares see nothing; the vendor sees an empty shadow and the
      // reset's own record, but none of the household's earlier commands.
      for (const token of [owner.userToken, member.userToken]) {
        assert.equal((await read(device.id, reset.body.id, token)).status, 404);
      }
      const shadow = await request(tp.platform, 'GET', `/v1/devices/${device.id}/shadow`, {
        token: tenant.vendorToken,
      });
      assert.equal(shadow.body.version, 0);
      const history = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(
        history.body.items.map((c: { name: string; status: string; result: unknown }) => [c.name, c.status, c.result]),
        [['factory-reset', 'succeeded', { reset: true }]],
      );

      await tp.platform.audit.flush();
      const issues = await tp.platform.audit.query({ type: 'device.command.issue', target: device.id, limit: 20 });
      assert.deepEqual(
        issues
          .filter((e) => e.details.builtin === true)
          .map((e) => [e.details.name, e.actor.type])
          .sort(),
        [
          ['factory-reset', 'user'],
          ['reboot', 'operator'],
          ['wipe', 'user'],
        ],
      );
      const results = await tp.platform.audit.query({ type: 'device.command.result', target: device.id, limit: 20 });
      const resetResult = results.find((e) => e.details.name === 'factory-reset');
      assert.deepEqual(resetResult?.actor, { type: 'device', id: device.id });
      assert.deepEqual(resetResult?.details.followUp, { shadowCleared: true, unbound: true });
      assert.deepEqual(
        results
          .filter((e) => e.details.builtin === true)
          .map((e) => [e.details.name, e.details.status])
          .sort(),
        [
          ['factory-reset', 'succeeded'],
          ['reboot', 'succeeded'],
          ['wipe', 'succeeded'],
        ],
      );
      const unbinds = await tp.platform.audit.query({ type: 'device.unbind', target: device.id, limit: 5 });
      assert.equal(unbinds[0]?.details.reason, 'factory-reset');
    });

    test('[CHAN-7] open commands time out after a restart: the deadline is in the database', async () => {
      const device = nextDevice();
      await silentDevice(device);
      // This process stops sweeping (as if it had stopped) with a command open.
      await tp.platform.commands.close();
      const sent = await send(device.id, { name: 'beep', timeoutSeconds: 1 });
      assert.equal(sent.status, 202, sent.text);
      await sleep(1500);
      assert.equal(await statusInDb(sent.body.id), 'delivered', 'nobody swept it');
      // The next process starts its sweep at once and ends what was left open.
      const audited: string[] = [];
      // Imported here: loading src/devices first, before the platform, trips an import cycle elsewhere.
      const { CommandsService } = await import('../../src/devices/index.ts');
      const next = new CommandsService({
        db: tp.platform.store.db,
        publish: () => {},
        isOnline: () => true,
        audit: (event) => audited.push(`${event.type}:${String(event.details?.status)}`),
        log: tp.platform.log,
      });
      next.start();
      try {
        await until(async () => (await statusInDb(sent.body.id)) === 'timed-out', 'the sweep after restart');
        assert.ok(audited.includes('device.command.result:timed-out'));
      } finally {
        await next.close();
      }
      await endClient(raws.at(-1)!);
    });
  });
}

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { deviceTopic, generateDeviceId, isWithinDeviceNamespace, parseDeviceTopic } from '../src/index.ts';

const deviceIdArb = fc
  .tuple(fc.stringMatching(/^[0-9a-f]{6}$/), fc.stringMatching(/^[0-9a-f]{6}$/))
  .map(([v, p]) => generateDeviceId(v, p));

describe('topic scheme', () => {
  test('[CHAN-6] topics of a device parse back to that device and channel', () => {
    const id = generateDeviceId('aaaaaa', 'bbbbbb');
    assert.deepEqual(parseDeviceTopic(deviceTopic.telemetry(id)), {
      deviceId: id,
      channel: 'telemetry',
      rest: [],
    });
    assert.deepEqual(parseDeviceTopic(deviceTopic.command(id, 'reboot')), {
      deviceId: id,
      channel: 'commands',
      rest: ['reboot'],
    });
    assert.equal(parseDeviceTopic(`devices/${id}/unknown`), null);
    assert.equal(parseDeviceTopic('devices/not-an-id/telemetry'), null);
    assert.equal(parseDeviceTopic(`other/${id}/telemetry`), null);
  });

  test('[CHAN-6] nothing in one device namespace lies in another device namespace', () => {
    fc.assert(
      fc.property(
        deviceIdArb,
        deviceIdArb,
        fc.array(fc.constantFrom('telemetry', 'state', '+', '#', 'commands', 'x'), { maxLength: 4 }),
        (a, b, tail) => {
          fc.pre(a !== b);
          const topic = [`devices/${a}`, ...tail].join('/');
          return !(isWithinDeviceNamespace(a, topic) && isWithinDeviceNamespace(b, topic));
        },
      ),
    );
  });

  test('[CHAN-6] wildcards above the device level never count as inside a namespace', () => {
    const id = generateDeviceId('aaaaaa', 'bbbbbb');
    for (const filter of [
      '#',
      '+/+/telemetry',
      'devices/+/telemetry',
      'devices/#',
      `devices/${id}`,
      `devices/${id}/`,
      `devices/${id}x/telemetry`,
    ]) {
      assert.equal(isWithinDeviceNamespace(id, filter), false, filter);
    }
    assert.equal(isWithinDeviceNamespace(id, `devices/${id}/#`), true);
    assert.equal(isWithinDeviceNamespace(id, `devices/${id}/commands/+`), true);
  });
});

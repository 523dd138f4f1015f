// Message delivery (ACC-1): codes reach people by SMS through the pluggable sender, here an SMS gateway
// webhook started by the test; nothing of the message reaches the outbox or the logs.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { OUTBOX_DIR } from '../../src/accounts/index.ts';
import { register } from '../helpers/account-flows.ts';
import { request, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

describe('SMS delivery through a gateway webhook', () => {
  let tp: TestPlatform;
  const received: { to: string; text: string }[] = [];
  const gateway = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as { to: string; text: string });
      res.writeHead(202).end();
    });
  });

  before(async () => {
    gateway.listen(0, '127.0.0.1');
    await once(gateway, 'listening');
    const { port } = gateway.address() as { port: number };
    tp = await startTestPlatform('sqlite', {
      accounts: { powDifficulty: 1000, smsWebhookUrl: `http://127.0.0.1:${port}/sms` },
    });
  });
  after(async () => {
    await tp?.close();
    gateway.close();
  });

  test('[ACC-1] a phone registration gets its activation code by SMS, and the code activates the account', async () => {
    const phone = `+4477${String(Date.now()).slice(-8)}`;
    const password = 'quartz meadow lantern 64';
    const res = await register(tp, { identifier: phone, password });
    assert.equal(res.status, 202);
    for (let i = 0; i < 100 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(received.length, 1);
    assert.equal(received[0]!.to, phone);
    const code = /\b(\d{8})\b/.exec(received[0]!.text)?.[1];
    assert.ok(code, 'the SMS carries the 8-digit code');
    const activated = await request(tp.platform, 'POST', '/v1/auth/activate', {
      body: { identifier: phone, code, password },
    });
    assert.equal(activated.status, 200, activated.text);
    const outbox = join(tp.dataDir, OUTBOX_DIR);
    assert.ok(!existsSync(outbox) || readdirSync(outbox).length === 0, 'nothing went to the outbox');
    assert.ok(!tp.logs.text().includes(phone) && !tp.logs.text().includes(code), 'neither number nor code logged');
  });
});

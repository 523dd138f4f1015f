// Implementations of MessageSender: SMTP through nodemailer (TLS required), an SMS webhook, and the
// development outbox (one JSON file per message in dataDir/outbox, owner-only; its path is logged so
// a developer can read a code). Recipients and bodies are personal data: they never go to the log.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createTransport, type Transporter } from 'nodemailer';
import type { Logger } from 'pino';
import { newId } from '../lib/random-ids.ts';
import type { MessageSender, OutgoingMessage } from './message-sender.ts';

export const OUTBOX_DIR = 'outbox';

export class OutboxSender implements MessageSender {
  readonly dir: string;
  readonly #log: Logger;

  constructor(dataDir: string, log: Logger) {
    this.dir = join(dataDir, OUTBOX_DIR);
    this.#log = log;
  }

  async send(message: OutgoingMessage): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const file = join(this.dir, `${Date.now()}-${newId('msg')}.json`);
    writeFileSync(file, `${JSON.stringify({ ...message, sentAt: new Date().toISOString() }, null, 2)}\n`, {
      mode: 0o600,
    });
    this.#log.info({ file, channel: message.channel, purpose: message.purpose }, 'message written to the outbox');
  }
}

export class SmtpSender implements MessageSender {
  readonly #transport: Transporter;
  readonly #from: string;

  constructor(smtpUrl: string, from: string) {
    // smtps:// uses implicit TLS; smtp:// must upgrade with STARTTLS (requireTLS): codes never travel in clear.
    const url = new URL(smtpUrl);
    if (!url.searchParams.has('requireTLS') && url.protocol === 'smtp:') url.searchParams.set('requireTLS', 'true');
    this.#transport = createTransport(url.toString());
    this.#from = from;
  }

  async send(message: OutgoingMessage): Promise<void> {
    await this.#transport.sendMail({ from: this.#from, to: message.to, subject: message.subject, text: message.text });
  }
}

export class SmsWebhookSender implements MessageSender {
  readonly #url: string;

  constructor(url: string) {
    this.#url = url;
  }

  async send(message: OutgoingMessage): Promise<void> {
    const response = await fetch(this.#url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ to: message.to, text: message.text }),
      redirect: 'error',
      signal: AbortSignal.timeout(10_000),
    });
    if (!response.ok) throw new Error(`SMS gateway answered ${response.status}`);
  }
}

/** Routes e-mail and SMS to their senders. */
export class ChannelSender implements MessageSender {
  readonly #email: MessageSender;
  readonly #sms: MessageSender;

  constructor(email: MessageSender, sms: MessageSender) {
    this.#email = email;
    this.#sms = sms;
  }

  send(message: OutgoingMessage): Promise<void> {
    return message.channel === 'sms' ? this.#sms.send(message) : this.#email.send(message);
  }
}

export function createMessageSender(
  config: { mailer: 'outbox' | 'smtp'; smtpUrl: string; mailFrom: string; smsWebhookUrl: string },
  dataDir: string,
  log: Logger,
): { sender: MessageSender; outboxDir: string | null; development: boolean } {
  const outbox = new OutboxSender(dataDir, log);
  const email = config.mailer === 'smtp' ? new SmtpSender(config.smtpUrl, config.mailFrom) : outbox;
  const sms = config.smsWebhookUrl ? new SmsWebhookSender(config.smsWebhookUrl) : outbox;
  const development = email === outbox || sms === outbox;
  return { sender: new ChannelSender(email, sms), outboxDir: development ? outbox.dir : null, development };
}

// Outgoing messages to people (ACC-1, ACC-6): one-time codes, sign-in alerts, invitations. Delivery is
// pluggable: SMTP (nodemailer) or SMS for production, the development outbox (files in the data
// directory) otherwise. Implementations live in message-senders.ts.

export interface OutgoingMessage {
  readonly channel: 'email' | 'sms';
  /** E-mail address or E.164 phone number. */
  readonly to: string;
  readonly subject: string;
  readonly text: string;
  /** What the message is for (activation, password-reset, sign-in-alert, invitation…); never secret. */
  readonly purpose: string;
}

export interface MessageSender {
  send(message: OutgoingMessage): Promise<void>;
}

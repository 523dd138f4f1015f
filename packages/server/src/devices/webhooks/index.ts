export {
  ADDRESS_REFUSED_MESSAGE,
  nonPublicReason,
  OutboundGuard,
  type OutboundGuardOptions,
  OutboundRefusedError,
  type OutboundTarget,
  type ResolvedAddress,
  type Resolver,
  systemResolver,
} from './outbound-guard.ts';
export { type SendOutcome, sendWebhook } from './webhook-sender.ts';
export { webhooksRoutes, type WebhooksRoutesOptions } from './webhooks-routes.ts';
export {
  MAX_ENDPOINTS_PER_TENANT,
  WEBHOOK_EVENT_TYPES,
  type WebhookDelivery,
  type WebhookDeliveryState,
  type WebhookEndpoint,
  type WebhookEventType,
  webhookRetryDelayMs,
  type WebhooksConfig,
  WebhooksService,
  type WebhooksServiceOptions,
} from './webhooks-service.ts';

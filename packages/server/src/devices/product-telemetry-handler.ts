// The telemetry channel handler that holds every device's telemetry to its product's data points
// (DEV-2): registered in platform.ts for devices/{id}/telemetry over MQTT, and run by the HTTPS device
// API too. Products are read through the 10 s product cache (one look-up per product, not per message).
import type { DeviceChannelHandler } from '../gateway/index.ts';
// The leaf module, not gateway/index.ts (which imports the guard, accounts and HTTP layers).
import { PublishRefusedError } from '../gateway/mqtt/broker-hooks.ts';
import type { DevicesService } from './devices-service.ts';
import { payloadJson } from './payload-json.ts';
import { checkTelemetry } from './product-schema.ts';

export function productTelemetryHandler(devices: Pick<DevicesService, 'cachedProduct'>): DeviceChannelHandler {
  return async (device, message) => {
    const product = await devices.cachedProduct(device.productId);
    if (!product?.dataPoints || product.dataPoints.properties.length === 0) return;
    // The hooks already checked that the payload is a UTF-8 JSON object (telemetry-payload.ts); the
    // parse is the one they made.
    const json = payloadJson(message.payload);
    if (!json.ok) throw new PublishRefusedError('payload-invalid', json.reason);
    const reason = checkTelemetry(product, json.value as object);
    if (reason !== null) throw new PublishRefusedError('payload-invalid', reason);
  };
}

// The product's allowed authentication modes, enforced at admission (DEV-2..5): a device that proved
// itself with its secret (MQTT password, timestamp-signed HTTPS request, HMAC challenge response) is
// admitted only when its product allows `secret`, or allows `hardware-id` and the device got its secret
// through hardware-ID registration; one that presented a certificate (mutual TLS) only when its product
// allows `certificate`. L2/L3 products allow only `certificate` (checkAuthModes), so they refuse every
// secret-authenticated device. Device tokens were checked when they were issued.
import type { DeviceAdmissionCheck, DevicesService } from './devices-service.ts';
import type { HardwareIdsService } from './hardware-ids-service.ts';

export const AUTH_MODE_REFUSAL = 'auth-mode-not-allowed';

export function productAuthModeCheck(
  devices: Pick<DevicesService, 'cachedProduct'>,
  hardwareIds: Pick<HardwareIdsService, 'isRegisteredDevice'>,
): DeviceAdmissionCheck {
  return async (device, method) => {
    if (method === 'token') return null;
    const product = await devices.cachedProduct(device.productId);
    if (!product) return AUTH_MODE_REFUSAL;
    if (method === 'certificate') return product.authModes.includes('certificate') ? null : AUTH_MODE_REFUSAL;
    if (product.authModes.includes('secret')) return null;
    if (product.authModes.includes('hardware-id') && (await hardwareIds.isRegisteredDevice(device.id))) return null;
    return AUTH_MODE_REFUSAL;
  };
}

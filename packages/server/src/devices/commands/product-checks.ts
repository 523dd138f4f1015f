// Desired state and custom commands checked against the device's product data-point schema (DEV-2):
// a product without declared properties or commands accepts any JSON object (the size and depth
// limits of the shadow and command services still apply). Built-in commands never come here (DEV-9).
import { CastellanError } from '../../errors/index.ts';
import type { DevicesService } from '../devices-service.ts';
import { checkCommand, checkDesiredState } from '../product-schema.ts';
import type { DesiredStateCheck } from '../shadow/shadow-service.ts';
import type { CommandCheck } from './commands-service.ts';

export function productChecks(devices: Pick<DevicesService, 'getProduct'>): {
  checkDesired: DesiredStateCheck;
  checkCommand: CommandCheck;
} {
  return {
    async checkDesired(device, state) {
      const product = await devices.getProduct(device.productId);
      const reason = product ? checkDesiredState(product, state) : null;
      if (reason !== null) {
        throw new CastellanError('ERR_SHADOW_STATE_INVALID', {
          message: `Desired state does not fit the product's data points: ${reason}`,
          details: { field: 'state' },
        });
      }
    },
    async checkCommand(device, name, params) {
      const product = await devices.getProduct(device.productId);
      const reason = product ? checkCommand(product, name, params) : null;
      if (reason !== null) {
        throw new CastellanError('ERR_COMMAND_INVALID', {
          message: `The command does not fit the product's data points: ${reason}`,
          details: { field: 'name' },
        });
      }
    },
  };
}

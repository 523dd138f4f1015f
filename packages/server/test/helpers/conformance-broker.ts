// Castellan's broker core behind the conformance listener (anonymous, open topics, plain TCP on
// loopback), in this process: what the MQTT corpus replay and the differential tests talk to.
import { defaultMqttConfig } from '../../src/config/index.ts';
import { conformanceHooks, MqttBroker, startConformanceListener } from '../../src/gateway/index.ts';
import { createLogger } from '../../src/logging/index.ts';

export async function startConformanceBroker(): Promise<{ port: number; close(): Promise<void> }> {
  const log = createLogger({ level: 'silent' });
  // The production broker's default limits (config-schema.ts, mqtt.*).
  const broker = new MqttBroker({ hooks: conformanceHooks(), limits: defaultMqttConfig(), log });
  const listener = await startConformanceListener(broker, { host: '127.0.0.1', port: 0 }, log);
  return {
    port: listener.address().port,
    async close() {
      await broker.close();
      await listener.close();
    },
  };
}

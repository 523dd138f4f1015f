// Differential MQTT tests: the same scenarios (helpers/mqtt-scenarios.ts) run against Castellan's broker
// core (the anonymous conformance listener, plain TCP on loopback) and against a private Mosquitto 2.0.x
// started here with its own config on a free port. Both are held to what the MQTT specification
// requires; where Mosquitto is known to behave otherwise, the scenario names the normative statement
// that decides and records Mosquitto's behaviour as a known difference instead of failing. Any other
// difference fails: either broker may be the one that is wrong, and the failure message says which
// observation differs from the spec.
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { defaultMqttConfig } from '../src/config/index.ts';
import { type BrokerLimits, conformanceHooks, MqttBroker, startConformanceListener } from '../src/gateway/index.ts';
import { createLogger } from '../src/logging/index.ts';
import { startConformanceBroker } from './helpers/conformance-broker.ts';
import { type MosquittoBroker, mosquittoUnavailable, startMosquitto } from './helpers/mosquitto.ts';
import { type Json, type Observation, type Scenario, scenarios } from './helpers/mqtt-scenarios.ts';

/** A scenario that has not finished by then is reported as such (the slowest waits about 17 s on the clock). */
const SCENARIO_TIMEOUT_MS = 25_000;

const defaults: BrokerLimits = defaultMqttConfig();

// Locally a missing Mosquitto skips the Mosquitto half; on CI it fails "Mosquitto is present on CI".
let mosquittoMissing: string | undefined;
let mosquittoRequiredError: Error | undefined;
try {
  mosquittoMissing = mosquittoUnavailable();
} catch (error) {
  mosquittoRequiredError = error as Error;
}

interface Endpoint {
  url: string;
  close(): Promise<void>;
}

/** Castellan's conformance broker with some limits changed (the default profile uses the helper as is). */
async function startCastellan(overrides: Partial<BrokerLimits>): Promise<Endpoint> {
  const log = createLogger({ level: 'silent' });
  const broker = new MqttBroker({ hooks: conformanceHooks(), limits: { ...defaults, ...overrides }, log });
  const listener = await startConformanceListener(broker, { host: '127.0.0.1', port: 0 }, log);
  return {
    url: listener.url(),
    async close() {
      await broker.close();
      await listener.close();
    },
  };
}

/** Both brokers configured alike for each profile a scenario may ask for. */
const profiles: Record<Scenario['profile'], { castellan: () => Promise<Endpoint>; mosquittoConfig: string[] }> = {
  default: {
    castellan: async () => {
      const broker = await startConformanceBroker();
      return { url: `mqtt://127.0.0.1:${broker.port}`, close: () => broker.close() };
    },
    // Castellan's defaults (config-schema.ts mqtt.maxPacketBytes, mqtt.maxKeepAliveSeconds).
    mosquittoConfig: [`max_packet_size ${defaults.maxPacketBytes}`, `max_keepalive ${defaults.maxKeepAliveSeconds}`],
  },
  // Mosquitto refuses a max_keepalive below 10 s.
  'keepalive-10': {
    castellan: () => startCastellan({ maxKeepAliveSeconds: 10 }),
    mosquittoConfig: [`max_packet_size ${defaults.maxPacketBytes}`, 'max_keepalive 10'],
  },
};

async function observe(scenario: Scenario, url: string): Promise<Observation> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      scenario.run(url),
      new Promise<Observation>((resolve) => {
        timer = setTimeout(
          () => resolve({ error: `scenario did not finish in ${SCENARIO_TIMEOUT_MS} ms` }),
          SCENARIO_TIMEOUT_MS,
        );
      }),
    ]);
  } catch (error) {
    return { error: (error as Error).stack ?? String(error) };
  } finally {
    clearTimeout(timer);
  }
}

function compared(observation: Observation): Observation {
  const rest = { ...observation };
  delete rest.info;
  return rest;
}

/**
 * What Mosquitto must show: the spec's expectation with the known difference laid over it. A value
 * given as anyOf(...) accepts any of its alternatives (the actual one is taken when it is among them).
 */
function expectedFromMosquitto(scenario: Scenario, actual: Observation): Observation {
  const expected: Observation = { ...scenario.expected };
  for (const [key, value] of Object.entries(scenario.knownDifference?.mosquitto ?? {})) {
    const alternatives = (value as { $anyOf?: Json[] } | null)?.$anyOf;
    expected[key] = alternatives && alternatives.some((a) => isDeepStrictEqual(a, actual[key])) ? actual[key]! : value;
  }
  return expected;
}

function describeInfo(observation: Observation | undefined): string {
  return observation?.info ? ` (info: ${JSON.stringify(observation.info)})` : '';
}

type Outcome = [Observation, Observation | undefined];

describe('[CHAN-6] MQTT differential: Castellan and Mosquitto against the MQTT specification', () => {
  const castellan = new Map<Scenario['profile'], Endpoint>();
  const mosquitto = new Map<Scenario['profile'], MosquittoBroker>();
  /** Slow scenarios, started as soon as the brokers are up and awaited in their own test. */
  const started = new Map<Scenario, Promise<Outcome>>();

  const runBoth = (scenario: Scenario): Promise<Outcome> => {
    const mosquittoBroker = mosquitto.get(scenario.profile);
    // Both at once: the brokers are independent and several scenarios wait on the clock.
    return Promise.all([
      observe(scenario, castellan.get(scenario.profile)!.url),
      mosquittoBroker ? observe(scenario, mosquittoBroker.url) : undefined,
    ]);
  };

  before(async () => {
    const used = [...new Set(scenarios.map((s) => s.profile))];
    for (const profile of used) {
      castellan.set(profile, await profiles[profile].castellan());
      if (!mosquittoMissing && !mosquittoRequiredError) {
        mosquitto.set(profile, await startMosquitto(profiles[profile].mosquittoConfig));
      }
    }
    for (const scenario of scenarios) if (scenario.slow) started.set(scenario, runBoth(scenario));
  });

  after(async () => {
    await Promise.all([...castellan.values(), ...mosquitto.values()].map((b) => b.close()));
  });

  test('Mosquitto is present on CI', { skip: process.env.CI === 'true' ? false : 'only required on CI' }, () => {
    assert.equal(mosquittoRequiredError?.message, undefined);
  });

  test("the scenarios' expectations match Castellan's configured defaults", () => {
    // The packet-size and keep-alive scenarios expect these values in CONNACK from both brokers.
    assert.equal(defaults.maxPacketBytes, 65536);
    assert.equal(defaults.maxKeepAliveSeconds, 300);
  });

  for (const scenario of scenarios) {
    test(`[CHAN-6] ${scenario.name} [${scenario.statements.join(', ')}]`, async (t) => {
      const mosquittoBroker = mosquitto.get(scenario.profile);
      const [fromCastellan, fromMosquitto] = await (started.get(scenario) ?? runBoth(scenario));

      await t.test('Castellan does what the specification requires', () => {
        t.diagnostic(`castellan: ${JSON.stringify(fromCastellan)}`);
        assert.deepEqual(
          compared(fromCastellan),
          scenario.expected,
          `Castellan differs from the specification${describeInfo(fromCastellan)}`,
        );
      });

      await t.test(
        scenario.knownDifference
          ? 'Mosquitto shows the known, documented difference'
          : 'Mosquitto does what the specification requires',
        { skip: mosquittoMissing ?? (mosquittoRequiredError ? 'Mosquitto required on CI but missing' : false) },
        () => {
          t.diagnostic(`mosquitto: ${JSON.stringify(fromMosquitto)}`);
          if (scenario.knownDifference) t.diagnostic(`known difference: ${scenario.knownDifference.statement}`);
          assert.deepEqual(
            compared(fromMosquitto!),
            expectedFromMosquitto(scenario, fromMosquitto!),
            `Mosquitto differs from the specification${describeInfo(fromMosquitto)}; its log:\n${mosquittoBroker!.log(60)}`,
          );
        },
      );
    });
  }
});

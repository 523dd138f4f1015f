// [CHAN-6] Robustness fuzzing of the MQTT packet path, seeded from the corpus (../shared/mqtt-corpus;
// built-in seeds where it is absent): a malformed packet closes that connection only. fast-check
// generates byte streams from the corpus's `send` payloads (bit flips, byte inserts and deletes,
// truncation, corrupted remaining and string lengths, repeated, dropped, reordered and spliced packets,
// random MQTT 5 properties, random bytes; alone or after a valid 3.1.1 or 5 CONNECT), writes each over
// raw TCP in random chunks to one broker in this process, and requires: the connection either closes or
// answers a PINGREQ within 1 s (never a hang); the broker releases it once the socket is closed (no
// leak); nothing at error level is logged, no handler exception is disguised as a protocol violation and
// nothing is thrown out of the broker; the broker's own packets are well formed; a witness client,
// connected and subscribed for the whole run, still receives what a fresh client publishes; and three
// observers subscribed to everything (3.1.1, 5, and 5 with a 64-byte Maximum Packet Size and Receive
// Maximum 1) stay connected and receive only well-formed packets.
//
// Fixed seed by default; CASTELLAN_FUZZ_SEED=<n> picks another, CASTELLAN_FUZZ_RUNS=<n> the number of
// streams. scripts/mqtt-fuzz.ts runs longer campaigns and minimises what it finds. Every failure found
// is kept below as a named regression case with its minimal bytes.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { corpusAvailable } from './helpers/mqtt-corpus.ts';
import {
  checkFramerAndValidator,
  connectPacket,
  describeInput,
  type FuzzInput,
  FuzzHarness,
  fuzzInputArb,
  loadSeeds,
} from './helpers/mqtt-fuzz.ts';

const SEED = Number(process.env.CASTELLAN_FUZZ_SEED ?? 0x5eed_2026);
const RUNS = Number(process.env.CASTELLAN_FUZZ_RUNS ?? 3_000);
/**
 * Bound on generation and shrinking together (a passing run takes seconds): a failure is reported,
 * shrunk as far as it got (each hang costs a second), before the test's own 120 s timeout.
 */
const TIME_LIMIT_MS = 90_000;

const seeds = loadSeeds();
const v4Connect = connectPacket(4).toString('hex');

/** Rethrows a fast-check failure with the seed that reproduces it first and the property's own error. */
function withSeed(error: unknown, seed: number): never {
  const message = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error && error.cause instanceof Error ? `\n${error.cause.message}` : '';
  assert.fail(`fuzzing failed with seed ${seed} (rerun: CASTELLAN_FUZZ_SEED=${seed})\n${message}${cause}`);
}

describe('MQTT packet path under fuzzing', () => {
  let harness: FuzzHarness;
  before(async () => {
    harness = await FuzzHarness.start();
  });
  after(async () => {
    await harness.close();
  });

  test(
    `[CHAN-6] ${RUNS} mutated corpus streams each close only their own connection: no crash, hang, leak or internal error`,
    { timeout: 120_000 },
    async (t) => {
      if (!corpusAvailable()) t.diagnostic('the MQTT corpus is absent: fuzzing from the built-in seeds only');
      const verdicts: Record<string, number> = {};
      const started = Date.now();
      try {
        await fc.assert(
          fc.asyncProperty(fuzzInputArb(seeds), async (input: FuzzInput) => {
            const report = await harness.runCase(input);
            if (report.failure) {
              throw new Error(`${report.failure.kind}: ${report.failure.detail}\n${describeInput(input)}`);
            }
            verdicts[report.verdict] = (verdicts[report.verdict] ?? 0) + 1;
            // After every stream, not every N: a failure is then pinned to the stream that caused it.
            const witness = await harness.checkWitness();
            if (witness) throw new Error(`witness: ${witness}\nafter ${describeInput(input)}`);
          }),
          { seed: SEED, numRuns: RUNS, interruptAfterTimeLimit: TIME_LIMIT_MS },
        );
      } catch (error) {
        withSeed(error, SEED);
      }
      t.diagnostic(
        `seed ${SEED}: ${RUNS} streams in ${Date.now() - started} ms (${Object.entries(verdicts)
          .map(([k, v]) => `${v} ${k}`)
          .join(', ')}), ${seeds.length} seeds`,
      );
      // Both outcomes must be common, or the generator has stopped reaching the handlers.
      assert.ok((verdicts.closed ?? 0) > RUNS / 10, 'too few streams were refused');
      assert.ok((verdicts.alive ?? 0) > RUNS / 20, 'too few streams kept their connection');
      assert.equal(
        harness.broker.connectionCount,
        harness.bystanderCount,
        'only the witness and the observers are connected',
      );
    },
  );

  // Regression cases: minimal streams the fuzzer found. `expect` is what the broker must do with them.
  // `either`: the rules alone decide (closed, or alive with its CONNACK first and answering PINGREQ).
  const regressions: Array<{ name: string; hex: string; chunks?: number[]; expect: 'closed' | 'alive' | 'either' }> = [
    {
      // mqtt-packet reads a PUBREC's packet identifier past the end of a zero-length packet: from the
      // next packet's bytes, or -1 when none have arrived; the broker then wrote PUBREL 62 02 without
      // an identifier, which desynchronised the client's stream. Remaining length must be 2 (3.1.1
      // 3.5.1); anything else is malformed.
      name: 'v4 PUBREC with remaining length 0, written alone',
      hex: `${v4Connect} 5000`,
      chunks: [1],
      expect: 'closed',
    },
    {
      name: 'v4 PUBREC with remaining length 0, followed by PINGREQ in the same write',
      hex: `${v4Connect} 5000 c000`,
      expect: 'closed',
    },
    {
      // The same for PUBREL: PUBCOMP 70 02 went out without an identifier.
      name: 'v4 PUBREL with remaining length 0',
      hex: `${v4Connect} 6200`,
      chunks: [1],
      expect: 'closed',
    },
    {
      // Maximum Packet Size 1 (v5 3.1.2.11.4): the broker dropped its own CONNACK and every PINGRESP as
      // too large for the client and left the connection open, silent, until the keep-alive ran out.
      name: 'v5 CONNECT with Maximum Packet Size 1',
      hex: '1014 00044d515454 05 02 003c 05 2700000001 0002667a',
      expect: 'either',
    },
    {
      // Maximum Packet Size 2: PINGRESP fits, the CONNACK did not and was dropped, so the connection
      // answered PINGREQ without ever having been acknowledged [MQTT-3.2.0-1].
      name: 'v5 CONNECT with Maximum Packet Size 2 (smaller than the CONNACK)',
      hex: '1014 00044d515454 05 02 003c 05 2700000002 0002667a',
      expect: 'either',
    },
  ];
  for (const r of regressions) {
    test(`[CHAN-6] fuzz regression: ${r.name}`, async () => {
      const input = { bytes: Buffer.from(r.hex.replace(/\s+/g, ''), 'hex'), chunks: r.chunks ?? [] };
      const report = await harness.runCase(input);
      assert.equal(report.failure, undefined, `${report.failure?.kind}: ${report.failure?.detail}`);
      if (r.expect !== 'either') assert.equal(report.verdict, r.expect, describeInput(input));
      assert.equal(await harness.checkWitness(), null);
    });
  }
});

test('[CHAN-6] the raw-bytes framer and validator never throw on generated streams', () => {
  // The same streams in this process: through the framer in their chunks, every packet validated as the
  // connection would, then under every version along with an arbitrary slice of the stream.
  try {
    fc.assert(
      fc.property(fuzzInputArb(seeds), fc.nat(), fc.nat(), (input, sliceFrom, sliceLength) => {
        checkFramerAndValidator(input, sliceFrom, sliceLength);
      }),
      { seed: SEED, numRuns: 20_000 },
    );
  } catch (error) {
    withSeed(error, SEED);
  }
});

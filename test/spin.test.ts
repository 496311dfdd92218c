// The busy-poll policy of src/cluster/spin.ts, with a substituted run-queue clock: it stops when the
// message comes, stops when the core is wanted elsewhere, and pauses after contention in a row.
import { expect, test } from "bun:test";
import { BACKOFF_MS, DEFAULT_SPIN_MS, SPIN_MS, Spinner, spinBound } from "../src/cluster/spin";

const quiet = { queuedNs: () => 0, runnable: () => 1 };

/** Resolves when `cond` holds (polled; no timing is asserted). */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await Bun.sleep(2);
  expect(cond()).toBe(true);
}

test("a spin ends when the message is there, and turns the event loop meanwhile", async () => {
  const s = new Spinner(1000, quiet);
  let came = false, turns = 0;
  s.spin(() => {
    turns++;
    return came;
  });
  setTimeout(() => (came = true), 5); // a timer fires while spinning: the loop is not blocked
  await until(() => came);
  const seen = turns;
  await Bun.sleep(10);
  expect(seen).toBeGreaterThan(1);
  expect(turns).toBeLessThanOrEqual(seen + 1); // no callback after the message
  expect(s.spins).toBe(1);
  expect(s.contended).toBe(0);
});

test("DAIRLLM_SPIN_MS: unset or empty the default, a number of ms, 0 off; anything else refused by name", () => {
  if (process.env.DAIRLLM_SPIN_MS === undefined) expect(SPIN_MS).toBe(DEFAULT_SPIN_MS);
  expect(DEFAULT_SPIN_MS).toBe(5);
  expect(spinBound(undefined)).toBe(5);
  expect(spinBound("")).toBe(5);
  expect(spinBound("0")).toBe(0);
  expect(spinBound("2.5")).toBe(2.5);
  for (const bad of ["-1", "five", "Infinity", "1ms"]) expect(() => spinBound(bad)).toThrow(`DAIRLLM_SPIN_MS must be a number of milliseconds (0: off), not "${bad}"`);
});

test("spinning off (bound 0: DAIRLLM_SPIN_MS=0) never schedules a callback", async () => {
  const s = new Spinner(0, quiet);
  let turns = 0;
  s.spin(() => (turns++, false));
  await Bun.sleep(5);
  expect(turns).toBe(0);
  expect(s.spins).toBe(0);
});

test("a core wanted by another thread cuts the spin; three in a row pause spinning", async () => {
  let queued = 0;
  const s = new Spinner(60_000, { queuedNs: () => (queued += 1e9), runnable: () => 1 }); // every look: a second more in the run queue
  for (let i = 1; i <= 3; i++) {
    s.spin(() => false);
    await until(() => s.contended === i);
  }
  s.spin(() => false); // paused for BACKOFF_MS: not started
  expect(s.spins).toBe(3);
  expect(BACKOFF_MS).toBeGreaterThan(0);
});

test("a spin without contention resets the count", async () => {
  let queued = 0, busy = true;
  const s = new Spinner(60_000, { queuedNs: () => (busy ? (queued += 1e9) : queued), runnable: () => 1 });
  for (let i = 1; i <= 2; i++) {
    s.spin(() => false);
    await until(() => s.contended === i);
  }
  busy = false;
  let came = false;
  s.spin(() => came);
  await Bun.sleep(2);
  came = true;
  await Bun.sleep(2);
  busy = true;
  s.spin(() => false);
  await until(() => s.contended === 3);
  s.spin(() => false); // only 1 in a row since the clean spin: still spinning
  await until(() => s.contended === 4);
  expect(s.spins).toBe(5);
});

test("more runnable threads than cores cut the spin at once", async () => {
  let runnable = 1;
  const s = new Spinner(60_000, { queuedNs: () => 0, runnable: () => runnable });
  let came = false;
  s.spin(() => came);
  await Bun.sleep(3);
  expect(s.contended).toBe(0); // alone: still spinning
  runnable = 1000;
  await until(() => s.contended === 1);
  came = true;
});

test("the real run-queue clock and runnable count are readable", () => {
  const s = new Spinner(1) as unknown as { queued(): number; runnable(): number };
  expect(Number.isFinite(s.queued())).toBe(true);
  expect(s.queued()).toBeGreaterThanOrEqual(0);
  expect(s.runnable()).toBeGreaterThanOrEqual(process.platform === "linux" ? 1 : 0); // this thread
});

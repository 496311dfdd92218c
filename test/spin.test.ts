// The busy-poll policy of src/cluster/spin.ts, with a substituted run-queue clock: it stops when the
// message comes, stops when the core is wanted elsewhere, and pauses after contention in a row.
import { expect, test } from "bun:test";
import { BACKOFF_MS, Spinner } from "../src/cluster/spin";

/** Resolves when `cond` holds (polled; no timing is asserted). */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await Bun.sleep(2);
  expect(cond()).toBe(true);
}

test("a spin ends when the message is there, and turns the event loop meanwhile", async () => {
  const s = new Spinner(1000, () => 0);
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

test("spinning off (bound 0) never schedules a callback", async () => {
  const s = new Spinner(0, () => 0);
  let turns = 0;
  s.spin(() => (turns++, false));
  await Bun.sleep(5);
  expect(turns).toBe(0);
  expect(s.spins).toBe(0);
});

test("a core wanted by another thread cuts the spin; three in a row pause spinning", async () => {
  let queued = 0;
  const s = new Spinner(60_000, () => (queued += 1e9)); // every look: a second more in the run queue
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
  const s = new Spinner(60_000, () => (busy ? (queued += 1e9) : queued));
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

test("the real run-queue clock is readable and counts up", () => {
  const s = new Spinner(1);
  const q = (s as unknown as { queued(): number }).queued();
  expect(Number.isFinite(q)).toBe(true);
  expect(q).toBeGreaterThanOrEqual(0);
});

// Reading the next weights into the cache while a reduction is awaited (src/cluster/warm.ts).
import { expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { lastLevelCacheBytes, warmBudget, Warmer, warmWhile } from "../src/cluster/warm";
import { loadKernels } from "../src/native/index";

/** A warmer over fake kernels that records which bytes of which view each step read. */
function recording(budget: number, chunk: number) {
  const reads: [number, number, number][] = []; // [view length, offset in the view's buffer, bytes]
  const w = new Warmer({ warm: (v) => (reads.push([v.buffer.byteLength, v.byteOffset, v.byteLength]), true) }, budget, chunk);
  return { w, reads };
}

test("a warmer reads its views in order, in whole 256-byte chunks, and stops at its budget", () => {
  const { w, reads } = recording(1024, 256);
  const a = new Uint8Array(1000), b = new Uint8Array(600);
  w.start([a, b]);
  let steps = 0;
  while (w.step()) steps++;
  // a: 0, 256, 512 (its last 232 bytes are short of a step), then b: 0; the budget is spent
  expect(reads).toEqual([
    [1000, 0, 256],
    [1000, 256, 256],
    [1000, 512, 256],
    [600, 0, 256],
  ]);
  expect(steps).toBe(4);
  expect(w.bytes).toBe(1024);
  // a new wait starts over with a whole budget
  w.start([b]);
  while (w.step());
  expect(reads.slice(4)).toEqual([
    [600, 0, 256],
    [600, 256, 256],
  ]);
  expect(w.bytes).toBe(1536);
});

test("a warmer with views shorter than a step, or none, reads nothing", () => {
  const { w, reads } = recording(1 << 20, 128 * 1024);
  w.start([new Uint8Array(255), new Uint8Array(0)]);
  expect(w.step()).toBe(false);
  w.start([]);
  expect(w.step()).toBe(false);
  expect(reads).toEqual([]);
});

test("warmWhile stops as soon as the message is there, and hands an exhausted wait to the spinner", async () => {
  const { w, reads } = recording(64 * 256, 256);
  w.start([new Uint8Array(64 * 256)]);
  let arrived = false;
  warmWhile(w, () => arrived);
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  arrived = true;
  const before = reads.length;
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  expect(before).toBeGreaterThan(0);
  expect(before).toBeLessThan(64);
  expect(reads.length).toBeLessThanOrEqual(before + 1); // at most the step already queued

  // nothing left to read: the rest of the wait goes to the spinner, with the same "done"
  const spun: (() => boolean)[] = [];
  const done = () => false;
  w.start([]);
  warmWhile(w, done, { spin: (d) => spun.push(d) });
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  expect(spun).toEqual([done]);
});

test("DAIRLLM_WARM: unset or 0 is off, auto is half the largest cache, a number is MiB, anything else is refused by name", () => {
  expect(warmBudget(undefined, () => 32 << 20)).toBe(0);
  expect(warmBudget("", () => 32 << 20)).toBe(0);
  expect(warmBudget("0", () => 32 << 20)).toBe(0);
  expect(warmBudget("2", () => 32 << 20)).toBe(2 << 20);
  expect(warmBudget("0.5", () => null)).toBe(512 * 1024);
  expect(warmBudget("auto", () => 32 << 20)).toBe(16 << 20);
  expect(warmBudget("auto", () => null)).toBe(1 << 20);
  expect(() => warmBudget("lots", () => null)).toThrow('DAIRLLM_WARM must be "auto" or a number of MiB (0: off), not "lots"');
  expect(() => warmBudget("-1", () => null)).toThrow("DAIRLLM_WARM");
});

test("the largest data or unified cache is read from sysfs; instruction caches and unreadable entries do not count", () => {
  const dir = mkdtempSync(join(tmpdir(), "dairllm-cache-"));
  try {
    const entry = (name: string, type: string, size: string) => {
      mkdirSync(join(dir, name));
      writeFileSync(join(dir, name, "type"), `${type}\n`);
      writeFileSync(join(dir, name, "size"), `${size}\n`);
    };
    entry("index0", "Data", "48K");
    entry("index1", "Instruction", "64M"); // larger, but not data
    entry("index2", "Unified", "1024K");
    mkdirSync(join(dir, "index3")); // no files: skipped
    entry("index4", "Unified", "2M");
    expect(lastLevelCacheBytes(dir)).toBe(2 << 20);
    expect(lastLevelCacheBytes(join(dir, "missing"))).toBeNull();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the native kernels read any view into the cache (short or ragged ones too); the TypeScript ones say they cannot", async () => {
  const k = await loadKernels({ threads: 2 });
  const buf = new Uint8Array(300_001).map((_, i) => i & 255);
  for (const v of [buf, buf.subarray(1), buf.subarray(0, 255), buf.subarray(0, 0), buf.subarray(7, 7 + 4096)]) {
    expect(k.warm(v)).toBe(k.name.startsWith("native"));
  }
  expect(buf[299_999]).toBe(299_999 & 255); // read, not written
  const ts = await loadKernels({ typescript: true });
  expect(ts.warm(buf)).toBe(false);
});

// WeightStream: over several passes every unit's views hold the file's bytes at its spans (unaligned
// offsets, odd lengths, spans ending at EOF), with O_DIRECT and with buffered reads; the ring never
// holds more than the budget and is allocated once; reading goes ahead of the consumer; bad spans,
// budgets, consumers and files get Errors naming the file, the unit and the offsets, never a hang.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mulberry32 } from "../src/model/sampler";
import { sequentialReadSpeed, type Span, type Unit, WeightStream } from "../src/model/stream";
import { addressOf } from "../src/native/ffi";

const dir = mkdtempSync(join(tmpdir(), "dairllm-stream-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file of `size` pseudo-random bytes. */
function randomFile(name: string, size: number, seed: number): { path: string; bytes: Uint8Array } {
  const rnd = mulberry32(seed);
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (rnd() * 256) | 0;
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

const SIZE = 3 * 1024 * 1024 + 12345; // not a multiple of 4096: the last read of the file comes back short
const file = randomFile("model.bin", SIZE, 7);

/** `n` units of 1 to 4 spans at unaligned offsets with odd lengths, some touching the end of the file. */
function makeUnits(n: number, seed: number, maxSpan = 200_000): Unit[] {
  const rnd = mulberry32(seed);
  const units: Unit[] = [];
  for (let u = 0; u < n; u++) {
    const spans: Span[] = [];
    for (let j = 0, k = 1 + Math.floor(rnd() * 4); j < k; j++) {
      const length = Math.floor(rnd() * maxSpan) | 1;
      spans.push({ offset: Math.floor(rnd() * (SIZE - length)), length });
    }
    units.push({ name: `unit-${u}`, spans });
  }
  units[0]!.spans.push({ offset: SIZE - 4097, length: 4097 }, { offset: SIZE - 1, length: 1 }, { offset: 5000, length: 0 });
  units[n - 1]!.spans.push({ offset: SIZE - 77_777, length: 77_776 }, { offset: 0, length: 4096 });
  return units;
}

/** Throws unless unit u's views hold the file's bytes at its spans (and, with O_DIRECT, sit where the alignment puts them). */
function checkViews(s: WeightStream, unit: Unit, views: Uint8Array[], bytes = file.bytes): void {
  expect(views.length).toBe(unit.spans.length);
  unit.spans.forEach((sp, j) => {
    const v = views[j]!;
    if (v.byteLength !== sp.length) throw new Error(`${unit.name} span ${j}: view of ${v.byteLength} bytes, expected ${sp.length}`);
    if (sp.length > 0 && s.stats.direct && addressOf(v) % 4096 !== sp.offset % 4096) throw new Error(`${unit.name} span ${j}: view misaligned`);
    if (Buffer.compare(v, bytes.subarray(sp.offset, sp.offset + sp.length)) !== 0) throw new Error(`${unit.name} span ${j} (${sp.offset}+${sp.length}): the view differs from the file`);
  });
}

/** Consumes `passes` cycles, holding `hold` units at once; every unit is checked when acquired and again when released. */
async function consume(s: WeightStream, units: Unit[], passes: number, hold = 1): Promise<void> {
  const held: { u: number; views: Uint8Array[] }[] = [];
  const releaseOldest = () => {
    const h = held.shift()!;
    checkViews(s, units[h.u]!, h.views); // not overwritten by the units read since
    s.release(h.u);
  };
  for (let i = 0; i < passes * units.length; i++) {
    const u = i % units.length;
    const got = s.acquire(u);
    const views = got instanceof Promise ? await got : got;
    checkViews(s, units[u]!, views);
    held.push({ u, views });
    if (held.length === hold) releaseOldest();
  }
  while (held.length) releaseOldest();
}

/** Expects `f` to throw (or reject) an Error whose message matches every pattern. */
async function expectError(f: () => unknown, ...patterns: RegExp[]): Promise<Error> {
  let err: unknown = null;
  try {
    await f();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof Error)) throw new Error(`expected an Error, got ${err}`);
  for (const p of patterns) expect(err.message).toMatch(p);
  return err;
}

const UNITS = makeUnits(12, 3);
const MIN = WeightStream.minimumBudget(UNITS);

describe("data", () => {
  for (const direct of [true, false]) {
    for (const [label, budget, hold] of [
      ["the minimum budget", MIN, 1],
      ["the minimum plus 5 bytes", MIN + 5, 1],
      ["2.5 units", Math.floor(2.5 * MIN), 2],
      ["a budget above all units", 100 << 20, 3],
    ] as const) {
      test(`${direct ? "O_DIRECT" : "buffered"}, ${label}, holding ${hold}: 3 passes give the file's bytes`, async () => {
        const log: string[] = [];
        const s = WeightStream.open(file.path, UNITS, budget, { direct, log: (l) => log.push(l) });
        await consume(s, UNITS, 3, hold);
        // tmpdir is expected on a filesystem with O_DIRECT (ext4 here); a refusal must have said so
        expect(s.stats.direct).toBe(direct && !log.some((l) => l.includes("O_DIRECT")));
        if (direct) expect(s.stats.direct).toBe(true);
        expect(s.stats.peakInUse).toBeLessThanOrEqual(budget + 4095);
        expect(s.stats.bytesRead).toBeGreaterThan(0);
        await s.close();
      });
    }
  }

  test("one read in flight gives the same bytes", async () => {
    const s = WeightStream.open(file.path, UNITS, 3 * MIN, { inFlight: 1 });
    await consume(s, UNITS, 3, 2);
    await s.close();
  });

  test("a single unit, a single span covering the whole file", async () => {
    const units = [{ name: "all", spans: [{ offset: 0, length: SIZE }] }];
    const s = WeightStream.open(file.path, units, WeightStream.minimumBudget(units));
    await consume(s, units, 3);
    expect(s.stats.bytesRead).toBe(3 * SIZE); // the short read at EOF is no error
    await s.close();
  });

  test("units of empty spans only are loaded at once, without reading", async () => {
    const units: Unit[] = [{ name: "empty", spans: [{ offset: 7, length: 0 }] }, { name: "none", spans: [] }];
    expect(WeightStream.minimumBudget(units)).toBe(0);
    const s = WeightStream.open(file.path, units, 1);
    for (let i = 0; i < 6; i++) {
      const got = s.acquire(i % 2);
      expect(got).toEqual(i % 2 ? [] : [new Uint8Array(0)]);
      s.release(i % 2);
    }
    expect(s.stats.bytesRead).toBe(0);
    await s.close();
  });

  test("units of a large file in order, bigger than one read piece", async () => {
    const big = randomFile("big.bin", 40 * 1024 * 1024 + 999, 11);
    const units: Unit[] = [0, 1, 2, 3].map((k) => ({ name: `layer ${k}`, spans: [{ offset: k * 10_000_000 + 13, length: 9_999_977 }, { offset: 40 * 1024 * 1024 - 3 * k, length: 999 + 3 * k }] }));
    const s = WeightStream.open(big.path, units, 25_000_000);
    for (let i = 0; i < 3 * units.length; i++) {
      const got = s.acquire(i % 4);
      checkViews(s, units[i % 4]!, got instanceof Promise ? await got : got, big.bytes);
      s.release(i % 4);
    }
    await s.close();
  });
});

describe("budget and read-ahead", () => {
  test("minimumBudget: the largest unit with its spans 4096-aligned", () => {
    const units: Unit[] = [
      { name: "a", spans: [{ offset: 4095, length: 2 }, { offset: 4096, length: 4096 }, { offset: 100, length: 0 }] }, // 8192 + 4096 + 0
      { name: "b", spans: [{ offset: 1, length: 5 * 4096 }] }, // 6 pages
      { name: "c", spans: [] },
    ];
    expect(WeightStream.minimumBudget(units)).toBe(6 * 4096);
    expect(WeightStream.minimumBudget([units[0]!])).toBe(3 * 4096);
    expect(WeightStream.minimumBudget([units[2]!])).toBe(0);
    expect(() => WeightStream.open(file.path, units, 6 * 4096 - 4096)).toThrow(/unit 1 \(b\) needs 24576 bytes .* minimum budget for these units is 24576/);
    expect(() => WeightStream.open(file.path, units, 6 * 4096)).not.toThrow();
  });

  test("the ring never holds more than the budget, and reading fills it", async () => {
    const units = makeUnits(30, 5, 100_000);
    const budget = 3 * WeightStream.minimumBudget(units) + 1000;
    const s = WeightStream.open(file.path, units, budget);
    await consume(s, units, 3, 2);
    expect(s.stats.peakInUse).toBeLessThanOrEqual(budget);
    expect(s.stats.peakInUse).toBeGreaterThan(budget / 2);
    await s.close();
  });

  test("read-ahead: after a pause, the next units are loaded when acquired, across the end of a pass", async () => {
    const units = makeUnits(6, 9, 50_000);
    const sizes = units.map((u) => WeightStream.minimumBudget([u]));
    const s = WeightStream.open(file.path, units, sizes.reduce((a, b) => a + b, 0) + 4096);
    const first = s.acquire(0);
    expect(first).toBeInstanceOf(Promise); // nothing can be loaded before the event loop runs
    await first;
    s.release(0);
    await Bun.sleep(150);
    for (let i = 1; i < 2 * units.length; i++) {
      const got = s.acquire(i % units.length);
      expect(got).toBeInstanceOf(Array);
      checkViews(s, units[i % units.length]!, got as Uint8Array[]);
      s.release(i % units.length);
      await Bun.sleep(20); // the next pass's unit is read once this one's space is free
    }
    expect(s.stats.waitSeconds).toBeLessThan(1);
    expect(s.stats.readSeconds).toBeGreaterThan(0);
    await s.close();
  });

  test("the ring is allocated once: RSS does not grow over 20 passes", async () => {
    const units = makeUnits(16, 13, 400_000);
    const s = WeightStream.open(file.path, units, 4 * WeightStream.minimumBudget(units));
    const rss = () => {
      Bun.gc(true);
      return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;
    };
    await consume(s, units, 2);
    const before = rss(), read0 = s.stats.bytesRead;
    await consume(s, units, 20);
    const after = rss(), read = s.stats.bytesRead - read0;
    console.log(`RSS ${(before / 2 ** 20).toFixed(1)} MiB after 2 passes, ${(after / 2 ** 20).toFixed(1)} MiB after 20 more, which read ${(read / 2 ** 20).toFixed(0)} MiB into a ring of ${(4 * WeightStream.minimumBudget(units) / 2 ** 20).toFixed(1)} MiB`);
    expect(read).toBeGreaterThan(100 << 20);
    expect(after - before).toBeLessThan(4 << 20);
    await s.close();
  });
});

describe("errors", () => {
  test("bad spans, budgets and unit lists are refused at open, naming the file, unit and offsets", () => {
    const span = (offset: number, length: number): Unit[] => [{ name: "ok", spans: [{ offset: 0, length: 10 }] }, { name: "blk.1.ffn", spans: [{ offset: 0, length: 1 }, { offset, length }] }];
    const path = file.path.replace(/[.]/g, "[.]");
    expect(() => WeightStream.open(file.path, span(SIZE - 10, 11), 1 << 20)).toThrow(new RegExp(`${path}: unit 1 \\(blk[.]1[.]ffn\\): span 1 covers bytes ${SIZE - 10}..${SIZE + 1}, beyond the end of the file \\(${SIZE} bytes\\)`));
    expect(() => WeightStream.open(file.path, span(SIZE + 1, 0), 1 << 20)).toThrow(/beyond the end of the file/);
    expect(() => WeightStream.open(file.path, span(-1, 5), 1 << 20)).toThrow(/unit 1 \(blk.1.ffn\): span 1 has offset -1 and length 5/);
    expect(() => WeightStream.open(file.path, span(1.5, 5), 1 << 20)).toThrow(/span 1 has offset 1.5/);
    expect(() => WeightStream.open(file.path, span(0, 2 ** 60), 1 << 20)).toThrow(/span 1 has offset 0 and length/);
    expect(() => WeightStream.open(file.path, [{ name: "x" } as Unit], 1 << 20)).toThrow(/unit 0 \(x\): has no list of spans/);
    expect(() => WeightStream.open(file.path, [], 1 << 20)).toThrow(/no units/);
    expect(() => WeightStream.open(file.path, UNITS, 0)).toThrow(/budget 0 is not a positive number/);
    expect(() => WeightStream.open(file.path, UNITS, MIN - 4096)).toThrow(/needs \d+ bytes of ring .* more than the budget/);
    expect(() => WeightStream.open(join(dir, "missing.bin"), UNITS, MIN)).toThrow(/missing[.]bin: cannot open: .*ENOENT|no such file/i);
  });

  test("acquire and release out of order are Errors", async () => {
    const s = WeightStream.open(file.path, UNITS, 3 * MIN);
    await expectError(() => s.acquire(1), /acquire\(1\) out of order: the next unit of the cycle is unit 0 \(unit-0\)/);
    await expectError(() => s.release(0), /release\(0\) but no unit is acquired/);
    const p = s.acquire(0);
    expect(p).toBeInstanceOf(Promise);
    await expectError(() => s.release(0), /release\(0\) before the data of unit 0 \(unit-0\) arrived/);
    await p;
    await s.acquire(1);
    await expectError(() => s.release(1), /release\(1\) out of order: the oldest acquired unit is unit 0/);
    await expectError(() => s.acquire(0), /acquire\(0\) out of order: the next unit of the cycle is unit 2/);
    s.release(0);
    s.release(1);
    await s.close();
  });

  test("holding more units than the ring can hold next to the next one is an Error, not a hang", async () => {
    const units = makeUnits(4, 21, 100_000).map((u) => ({ ...u, spans: u.spans.slice(0, 1) }));
    const s = WeightStream.open(file.path, units, WeightStream.minimumBudget(units));
    await s.acquire(0);
    await expectError(() => s.acquire(1), /unit 1 \(unit-1\) needs \d+ bytes, which the ring of \d+ cannot give while 1 units are acquired and not released/);
    await s.close();
  });

  test("a file truncated while streaming: the acquire of the missing unit rejects, naming it", async () => {
    const t = randomFile("truncated.bin", 8 << 20, 17);
    const units: Unit[] = [0, 1, 2, 3, 4, 5, 6, 7].map((k) => ({ name: `layer ${k}`, spans: [{ offset: k << 20, length: (1 << 20) - 5 }] }));
    const s = WeightStream.open(t.path, units, 2 << 20);
    let err: Error | null = null, served = 0;
    for (let i = 0; i < 16 && !err; i++) {
      try {
        const got = s.acquire(i % 8);
        checkViews(s, units[i % 8]!, got instanceof Promise ? await got : got, t.bytes);
        served++;
        s.release(i % 8);
      } catch (e) {
        err = e as Error;
      }
      if (i === 1) truncateSync(t.path, 4 << 20);
    }
    // units 0-1 were read before the truncation, 2-3 are still in the file, 4-7 are not
    expect(served).toBe(4);
    expect(err?.message).toMatch(/truncated[.]bin: unit [4-7] \(layer [4-7]\), bytes \d+..\d+: the read returned 0 of 1048576 bytes: the file has 4194304 bytes now, 8388608 when opened \(truncated\?\)/);
    await expectError(() => s.acquire(5), /the file has 4194304 bytes now/); // the failure sticks
    await s.close();
  });

  test("an I/O error rejects the acquire with the system's message (a directory read as a file)", async () => {
    const d = join(dir, "a-directory");
    mkdirSync(d);
    const s = WeightStream.open(d, [{ name: "blk.0", spans: [{ offset: 10, length: 100 }] }], 1 << 20, { direct: false });
    await expectError(() => s.acquire(0), /a-directory: unit 0 \(blk[.]0\), bytes 0..\d+: read failed: .*EISDIR/);
    await expectError(() => s.acquire(0), /EISDIR/); // the failure sticks
    await s.close();
  });

  test("close: a waiting acquire rejects, reads in flight finish before it resolves, and nothing is read after", async () => {
    const s = WeightStream.open(file.path, UNITS, 100 << 20);
    const p = s.acquire(0);
    expect(p).toBeInstanceOf(Promise);
    const closed = s.close();
    await expectError(() => p, /the stream was closed/);
    await closed;
    const n = s.stats.bytesRead;
    await Bun.sleep(50);
    expect(s.stats.bytesRead).toBe(n);
    expect(() => s.acquire(1)).toThrow(/after close/);
    s.release(0); // a no-op after close
    expect(s.close()).toBe(closed);
  });
});

test("sequentialReadSpeed reads the file once, with and without O_DIRECT", async () => {
  for (const direct of [true, false]) {
    const r = await sequentialReadSpeed(file.path, { chunk: 1 << 20, direct });
    expect(r.bytes).toBe(SIZE);
    expect(r.direct).toBe(direct);
    expect(r.bytesPerSecond).toBeGreaterThan(0);
    const part = await sequentialReadSpeed(file.path, { chunk: 65536, maxBytes: 1_000_001, direct });
    expect(part.bytes).toBe(1_000_001);
  }
});

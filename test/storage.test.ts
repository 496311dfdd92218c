// File identity (src/cluster/storage.ts): the fast sampled MD5, the full MD5, errors, comparison
// messages and the progress bar.
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { compareIdentity, type FileIdentity, fileIdentity, MiB, progressBar } from "../src/cluster/storage";

const MODELS = join(import.meta.dir, "fixtures", "models");
const FIXTURES = ["mini-f32.gguf", "mini-q8_0.gguf", "mini-q4_0.gguf", "tiny-q4_0.gguf"]; // 16 MB, 4.3 MB, 2.3 MB (< 3 MiB: whole file), 99 KB
const TMP = mkdtempSync(join(tmpdir(), "dairllm-storage-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** The rule written out independently: MD5(start 1 MiB | middle 1 MiB at floor((size-1MiB)/2) & ~4095 | last 1 MiB | size u64 LE). */
function expectedFast(bytes: Uint8Array): string {
  const size = bytes.length;
  const h = createHash("md5");
  if (size < 3 * MiB) h.update(bytes);
  else {
    const mid = Math.floor((size - MiB) / 2) - (Math.floor((size - MiB) / 2) % 4096);
    h.update(bytes.subarray(0, MiB)).update(bytes.subarray(mid, mid + MiB)).update(bytes.subarray(size - MiB));
  }
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(size));
  return h.update(len).digest("hex");
}

function md5sum(path: string): string | null {
  if (!Bun.which("md5sum")) return null;
  return Bun.spawnSync(["md5sum", path]).stdout.toString().split(" ")[0]!;
}

/** A temp copy of `src` with fn applied to its bytes. */
function variant(name: string, bytes: Uint8Array, fn: (b: Uint8Array) => void = () => {}): string {
  const b = Uint8Array.from(bytes);
  fn(b);
  const p = join(TMP, name);
  writeFileSync(p, b);
  return p;
}

// A 9 MiB + 1234 byte file: middle sample at floor((size - 1 MiB)/2) aligned down = 4 MiB, so
// [1 MiB, 4 MiB) and [5 MiB, size - 1 MiB) are outside the samples. Full MD5 reads 3 chunks of 4 MiB.
const BIG_SIZE = 9 * MiB + 1234;
const bigBytes = new Uint8Array(BIG_SIZE);
for (let i = 0, x = 12345; i < BIG_SIZE; i++) bigBytes[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
const BIG = variant("big.bin", bigBytes);

describe("fast identity", () => {
  test("fixtures: deterministic, stable, equal to the sampling rule computed independently", async () => {
    for (const f of FIXTURES) {
      const p = join(MODELS, f);
      const a = await fileIdentity(p);
      const b = await fileIdentity(p);
      expect(a).toEqual(b);
      expect(a.path).toBe(p);
      expect(a.size).toBe(Bun.file(p).size);
      expect(a.fastMd5).toMatch(/^[0-9a-f]{32}$/);
      expect(a.fullMd5).toBeUndefined();
      expect(a.fastMd5).toBe(expectedFast(readFileSync(p)));
    }
  });

  test("a file over 8 MiB is sampled, and the size is mixed in", async () => {
    const id = await fileIdentity(BIG);
    expect(id.size).toBe(BIG_SIZE);
    expect(id.fastMd5).toBe(expectedFast(bigBytes));
    expect(id.fastMd5).not.toBe(createHash("md5").update(bigBytes).digest("hex"));
  });

  test("a copy is identical; the path is not part of the identity", async () => {
    const src = join(MODELS, "mini-q8_0.gguf");
    const dst = join(TMP, "copy.gguf");
    copyFileSync(src, dst);
    const [a, b] = [await fileIdentity(src, { full: true }), await fileIdentity(dst, { full: true })];
    expect(b.path).toBe(dst);
    expect({ ...b, path: "" }).toEqual({ ...a, path: "" });
    expect(compareIdentity(a, b)).toBeNull();
  });

  test("a flipped byte in the middle sample changes fastMd5", async () => {
    const at = 4 * MiB + 100;
    const a = await fileIdentity(BIG, { full: true });
    const b = await fileIdentity(variant("mid.bin", bigBytes, (x) => void (x[at]! ^= 1)), { full: true });
    expect(b.size).toBe(a.size);
    expect(b.fastMd5).not.toBe(a.fastMd5);
    expect(b.fullMd5).not.toBe(a.fullMd5);
    expect(compareIdentity(a, b)).toContain("same size: a different or corrupted file");
  });

  test("LIMIT: a flipped byte between the samples changes only fullMd5", async () => {
    const a = await fileIdentity(BIG, { full: true });
    for (const at of [2 * MiB, 6 * MiB]) {
      const b = await fileIdentity(variant(`out-${at}.bin`, bigBytes, (x) => void (x[at]! ^= 1)), { full: true });
      expect(b.fastMd5).toBe(a.fastMd5); // the fast check cannot see it ...
      expect(b.fullMd5).not.toBe(a.fullMd5); // ... only the full one does
      expect(compareIdentity({ ...a, fullMd5: undefined }, b)).toBeNull();
      expect(compareIdentity(a, b)).toContain("full checksum");
    }
  });

  test("truncating by one byte changes the size (and fastMd5)", async () => {
    for (const src of [BIG, join(MODELS, "tiny-q4_0.gguf")]) {
      const p = join(TMP, "trunc.bin");
      copyFileSync(src, p);
      const a = await fileIdentity(src);
      truncateSync(p, a.size - 1);
      const b = await fileIdentity(p);
      expect(b.size).toBe(a.size - 1);
      expect(b.fastMd5).not.toBe(a.fastMd5);
      expect(compareIdentity(a, b)).toStartWith(`size ${a.size} here, ${a.size - 1} on the worker`);
    }
  });
});

describe("full identity", () => {
  test("equals MD5 of the whole file (Bun.CryptoHasher and md5sum)", async () => {
    for (const p of [...FIXTURES.map((f) => join(MODELS, f)), BIG]) {
      const id = await fileIdentity(p, { full: true });
      expect(id.fullMd5).toBe(new Bun.CryptoHasher("md5").update(readFileSync(p)).digest("hex"));
      const sys = md5sum(p);
      if (sys) expect(id.fullMd5).toBe(sys);
      expect(id.fastMd5).toBe((await fileIdentity(p)).fastMd5);
    }
  });

  test("progress is monotonic, in 4 MiB steps, from 0 to the size", async () => {
    const seen: [number, number][] = [];
    await fileIdentity(BIG, { full: true, onProgress: (d, t) => seen.push([d, t]) });
    expect(seen.map(([d]) => d)).toEqual([0, 4 * MiB, 8 * MiB, BIG_SIZE]);
    expect(seen.every(([, t]) => t === BIG_SIZE)).toBe(true);
  });
});

describe("errors name the path and the problem", () => {
  test("missing, directory, empty", async () => {
    const empty = join(TMP, "empty.gguf");
    writeFileSync(empty, "");
    const missing = join(TMP, "nope", "m.gguf");
    await expect(fileIdentity(missing)).rejects.toThrow(`${missing}: no such file`);
    await expect(fileIdentity(TMP)).rejects.toThrow(`${TMP}: is a directory`);
    await expect(fileIdentity(empty, { full: true })).rejects.toThrow(`${empty}: empty file`);
  });

  // root (or CAP_DAC_OVERRIDE) reads through chmod 000: detect it by trying.
  const locked = join(TMP, "locked.gguf");
  writeFileSync(locked, "x");
  chmodSync(locked, 0);
  let readable = true;
  try {
    closeSync(openSync(locked, "r"));
  } catch {
    readable = false;
  }
  test.skipIf(readable)("unreadable (skipped as root: chmod 000 does not block reads)", async () => {
    await expect(fileIdentity(locked)).rejects.toThrow(`${locked}: permission denied`);
  });
});

describe("compareIdentity", () => {
  const a: FileIdentity = { path: "/data/m.gguf", size: 4301248, fastMd5: "6f22aa", fullMd5: "11" };
  test("messages", () => {
    expect(compareIdentity(a, { ...a, path: "/mnt/m.gguf" })).toBeNull();
    expect(compareIdentity(a, { ...a, fastMd5: "6F22AA" })).toBeNull();
    expect(compareIdentity(a, { ...a, fullMd5: undefined })).toBeNull();
    expect(compareIdentity(a, { ...a, path: "/mnt/m.gguf", size: 4301247 })).toBe("size 4301248 here, 4301247 on the worker (here: /data/m.gguf; the worker: /mnt/m.gguf)");
    expect(compareIdentity(a, { ...a, fastMd5: "91c6bb" }, "worker 10.0.0.7")).toBe(
      "fast checksum 6f22aa here, 91c6bb on worker 10.0.0.7 (same size: a different or corrupted file) (here: /data/m.gguf; worker 10.0.0.7: /data/m.gguf)",
    );
    expect(compareIdentity(a, { ...a, fullMd5: "22" })).toStartWith("full checksum 11 here, 22 on the worker (same size and sampled checksum");
  });
});

describe("progressBar", () => {
  const sink = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, s: { isTTY, write: (x: string) => out.push(x) } };
  };
  test("TTY: redraws with \\r, throttled, ends the line at 100%", () => {
    const { out, s } = sink(true);
    const bar = progressBar("full md5", s);
    for (let d = 0; d <= 1000; d++) bar(d * 100 * MiB / 1000, 100 * MiB);
    expect(out.length).toBeLessThan(5); // 1001 calls within a few ms
    expect(out[0]).toBe("\rfull md5 [....................] 0% 0/100 MiB");
    expect(out.at(-1)).toBe("\rfull md5 [####################] 100% 100/100 MiB\n");
    const { out: o2, s: s2 } = sink(true);
    progressBar("x", s2)(42 * MiB, 100 * MiB);
    expect(o2).toEqual(["\rx [########............] 42% 42/100 MiB"]);
  });
  test("not a TTY: one final line", () => {
    const { out, s } = sink(false);
    const bar = progressBar("full md5", s);
    for (const d of [0, 1, 2, 3]) bar(d * MiB, 3 * MiB);
    bar(3 * MiB, 3 * MiB);
    expect(out).toEqual(["full md5 [####################] 100% 3.0/3.0 MiB\n"]);
  });
});

// The native library's plumbing: type table mirror, the row split, the persistent pool, the loader's
// fallback to the TypeScript kernels.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createNativeKernels, nativeInfo, nativeSplitRange, nativeTypeInfo } from "../src/native/ffi";
import { GGMLType, TYPE_TRAITS, typeBytes } from "../src/native/types";

test("types.ts mirrors the block layouts the library was compiled with", () => {
  for (const [type, t] of TYPE_TRAITS) {
    expect(nativeTypeInfo(type)).toEqual({ blockValues: t.blockValues, blockBytes: t.blockBytes, activation: t.activation });
  }
  expect(nativeTypeInfo(3).blockBytes).toBe(0); // Q4_1: unknown to the library
  expect(typeBytes(GGMLType.Q4_0, 4096)).toBe(2304);
  expect(() => typeBytes(GGMLType.Q8_0, 33)).toThrow(/not a multiple of the block size 32/);
});

test("split_range: contiguous, complete, balanced on uneven sizes", () => {
  for (const n of [0, 1, 2, 5, 7, 31, 32, 33, 4095, 4096]) {
    for (let nth = 1; nth <= 8; nth++) {
      let next = 0;
      const sizes: number[] = [];
      for (let ith = 0; ith < nth; ith++) {
        const [a, b] = nativeSplitRange(n, nth, ith);
        expect(a).toBe(next);
        sizes.push(b - a);
        next = b;
      }
      expect(next).toBe(n);
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      // the larger shares come first
      expect(sizes).toEqual([...sizes].sort((x, y) => y - x));
    }
  }
  expect(() => nativeSplitRange(5, 0, 0)).toThrow(/out of its domain/);
  expect(() => nativeSplitRange(5, 2, 2)).toThrow(/out of its domain/);
});

/** Under qemu-user (arm64 CI) child processes need the same emulator in front: DAIRLLM_TEST_EXEC. */
const EXEC = (process.env.DAIRLLM_TEST_EXEC ?? "").split(" ").filter(Boolean);

/** The pool's threads (named by the library; Bun starts threads of its own at times, e.g. for the JIT). */
function threadCount(): number {
  // a thread that is exiting can leave /proc between the listing and the read of its name
  const name = (t: string) => {
    try {
      return readFileSync(`/proc/self/task/${t}/comm`, "utf8").trim();
    } catch {
      return "";
    }
  };
  return readdirSync("/proc/self/task").filter((t) => name(t) === "dairllm-pool").length;
}

test("the pool starts its threads once: no thread is created per call", () => {
  const before = threadCount();
  const k = createNativeKernels(4);
  expect(k.threads).toBe(4);
  expect(threadCount()).toBe(before + 3);
  const rows = 512, cols = 256;
  const w = new Float32Array(rows * cols).fill(0.5);
  const x = new Float32Array(cols).fill(2);
  const out = new Float32Array(rows);
  for (let i = 0; i < 2000; i++) k.matmul(out, rows, w, GGMLType.F32, x, cols, 0, rows, 1);
  expect(out[rows - 1]).toBe(256);
  expect(threadCount()).toBe(before + 3);
  k.close();
  // close joins the threads; a joined thread can still be listed in /proc for a moment while the
  // kernel (or qemu-user, which runs the arm64 tests) finishes its exit, so allow it a second to go
  for (let i = 0; i < 1000 && threadCount() !== before; i++) Bun.sleepSync(1);
  expect(threadCount()).toBe(before);
});

test("without the native library the TypeScript kernels take over, with one notice", () => {
  const script = `
    import { loadKernels } from "./src/native/index.ts";
    const a = await loadKernels({ threads: 2 });
    const b = await loadKernels({ threads: 2 });
    const out = new Float32Array(2);
    a.add(out, new Float32Array([1, 2]), new Float32Array([3, 4]), 2);
    console.log(a.name, b.name, out.join(","));
  `;
  const p = Bun.spawnSync([...EXEC, process.execPath, "-e", script], {
    cwd: join(import.meta.dir, ".."),
    env: { ...process.env, DAIRLLM_LIB: "/nonexistent/libdairllm.so" },
  });
  const stderr = p.stderr.toString();
  expect(p.stdout.toString().trim()).toBe("typescript typescript 4,6");
  expect(stderr.match(/native kernels unavailable/g)?.length).toBe(1);
  expect(stderr).toContain("/nonexistent/libdairllm.so (missing)");
  expect(p.exitCode).toBe(0);
});

test("DAIRLLM_VARIANT forces a variant, and an unknown one is refused by name", () => {
  const script = `
    import { createNativeKernels } from "./src/native/ffi.ts";
    try { console.log(createNativeKernels(1).name); } catch (e) { console.log("error: " + e.message); }
  `;
  const run = (variant: string) =>
    Bun.spawnSync([...EXEC, process.execPath, "-e", script], { cwd: join(import.meta.dir, ".."), env: { ...process.env, DAIRLLM_VARIANT: variant } }).stdout.toString().trim();
  expect(run("scalar")).toBe("native:scalar");
  if (nativeInfo().variants.some((v) => v.name === "ssse3" && v.supported)) expect(run("ssse3")).toBe("native:ssse3");
  expect(run("no-such-variant")).toMatch(/^error: DAIRLLM_VARIANT=no-such-variant is not a variant this CPU supports \(scalar/);
});

test("the bandwidth probe reads every byte: its checksum is the sum of the buffer's 64-bit words, in every variant", () => {
  for (const bytes of [256, 256 * 7, 65536 + 768]) {
    const words = new BigUint64Array(bytes / 8).map((_, i) => BigInt((i * 7919) % 1000));
    const want = Number(words.reduce((s, w) => s + w, 0n));
    const buf = new Uint8Array(words.buffer);
    nativeInfo().variants.forEach((v, i) => {
      if (!v.supported) return;
      for (const threads of [1, 3]) {
        const k = createNativeKernels(threads, i);
        try {
          expect({ variant: v.name, threads, bytes, checksum: k.probeRead(buf, 1).checksum }).toEqual({ variant: v.name, threads, bytes, checksum: want });
        } finally {
          k.close();
        }
      }
    });
  }
});

test("releaseFilePages drops a file mapping's pages from the process; reads fault them in again, unchanged", () => {
  const { mkdtempSync, writeFileSync, rmSync } = require("node:fs") as typeof import("node:fs");
  const { tmpdir } = require("node:os") as typeof import("node:os");
  const dir = mkdtempSync(join(tmpdir(), "dairllm-pages-"));
  try {
    const path = join(dir, "pages.bin");
    const size = 16 << 20;
    const content = new Uint8Array(size).map((_, i) => (i * 31 + (i >> 12)) & 255);
    writeFileSync(path, content);
    // resident bytes of this file's mappings alone (smaps), not the process's RssFile: other file
    // pages the runtime maps or drops meanwhile must not count (they made this test flaky under load)
    const rssFile = () => {
      let total = 0, ours = false;
      for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
        const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
        if (head) ours = head[1] === path;
        else if (ours && line.startsWith("Rss:")) total += Number(/(\d+) kB/.exec(line)![1]) * 1024;
      }
      return total;
    };
    const map = Bun.mmap(path, { shared: false });
    const view = map.subarray(1000, size - 1000); // not page-aligned: only whole pages inside go
    const k = createNativeKernels(1);
    let sum = 0, before = 0, after = 0;
    try {
      for (let i = 0; i < map.length; i += 4096) sum += map[i]!;
      before = rssFile();
      expect(k.releaseFilePages(view)).toBe(true);
      after = rssFile();
      expect(k.releaseFilePages(view.subarray(0, 0))).toBe(true);
    } finally {
      k.close();
    }
    console.log(`resident ${(before / 2 ** 20).toFixed(1)} -> ${(after / 2 ** 20).toFixed(1)} MiB after releasing ${(view.length / 2 ** 20).toFixed(1)} MiB`);
    expect(before - after).toBeGreaterThanOrEqual(size - 128 * 1024); // file pages may come in 64 KiB folios
    expect(Buffer.from(map).equals(Buffer.from(content))).toBe(true);
    expect(sum).toBeGreaterThan(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the TypeScript kernels cannot release pages and say so", () => {
  const { createTsKernels } = require("../src/native/ts-kernels") as typeof import("../src/native/ts-kernels");
  expect(createTsKernels().releaseFilePages(new Uint8Array(8192))).toBe(false);
});

test("copyRows: a column slice into rows of its own, native (1-4 threads) and TypeScript alike, odd sizes", () => {
  const { createTsKernels } = require("../src/native/ts-kernels") as typeof import("../src/native/ts-kernels");
  const ts = createTsKernels();
  const src = new Uint8Array(3 * 1024 * 1024 + 77);
  for (let i = 0; i < src.length; i++) src[i] = (i * 2654435761) >>> 24;
  // shapes: one row, odd rows and bytes, whole rows (stride = row bytes), and > 1 MiB (split over threads)
  const shapes: [number, number, number, number][] = [
    [1, 1, 1, 0], [3, 18, 18, 5], [33, 17, 100, 3], [31, 1584, 3168, 1], [1000, 1152, 1152, 0], [2048, 576, 1152, 77],
  ];
  for (const threads of [1, 2, 3, 4]) {
    const k = createNativeKernels(threads);
    try {
      for (const [rows, rowBytes, stride, offset] of shapes) {
        const from = src.subarray(offset);
        const want = new Uint8Array(rows * rowBytes + 8).fill(0xee), got = want.slice();
        ts.copyRows(want, from, rows, rowBytes, stride);
        k.copyRows(got, from, rows, rowBytes, stride);
        expect(got).toEqual(want);
        for (let r = 0; r < rows; r += Math.max(1, rows >> 3)) expect(got.subarray(r * rowBytes, (r + 1) * rowBytes)).toEqual(from.subarray(r * stride, r * stride + rowBytes));
        expect(got.subarray(rows * rowBytes)).toEqual(new Uint8Array(8).fill(0xee)); // nothing past the rows
      }
      k.copyRows(new Uint8Array(0), src, 0, 16, 16); // no rows: nothing to do
      expect(() => k.copyRows(new Uint8Array(64), src, 2, 32, 16)).toThrow("source stride 16 is below the row's 32 bytes");
      expect(() => k.copyRows(new Uint8Array(63), src, 2, 32, 32)).toThrow("dst holds 63 bytes");
      expect(() => k.copyRows(new Uint8Array(64), src.subarray(0, 40), 2, 32, 32)).toThrow("src holds 40 bytes");
    } finally {
      k.close();
    }
  }
  expect(() => ts.copyRows(new Uint8Array(64), src, 2, 32, 16)).toThrow("source stride 16 is below the row's 32 bytes");
});

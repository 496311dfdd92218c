// Every native kernel, in every SIMD variant this CPU supports, against the native scalar reference
// and the TypeScript kernels, on sizes 1, 31, 32, 33, 4095, 4096, odd row ranges and 1-4 threads.
// The same file runs on arm64 under qemu (scripts/test-arm64.sh).
import { afterAll, describe, expect, test } from "bun:test";
import { createNativeKernels, nativeInfo, type NativeKernels } from "../src/native/ffi";
import { createTsKernels } from "../src/native/ts-kernels";
import { GGMLType, RopeMode, typeBytes } from "../src/native/types";

const info = nativeInfo();
const supported = info.variants.filter((v) => v.supported);
const SIZES = [1, 31, 32, 33, 4095, 4096];
const THREADS = [1, 2, 3, 4];
const ts = createTsKernels();
const open: NativeKernels[] = [];
const scalar = track(createNativeKernels(1, 0));
afterAll(() => open.forEach((k) => k.close()));

function track(k: NativeKernels): NativeKernels {
  open.push(k);
  return k;
}

/** Deterministic values in [-1, 1). */
function rand(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

/** Weights of a type, made from random floats by the reference quantisers. */
function weights(type: GGMLType, rows: number, cols: number, seed: number): Uint8Array {
  const f = rand(rows * cols, seed).map((v) => v * 0.05);
  return encode(type, f);
}

function encode(type: GGMLType, f: Float32Array): Uint8Array {
  switch (type) {
    case GGMLType.F32:
      return new Uint8Array(f.buffer);
    case GGMLType.F16: {
      const h = new Uint16Array(f.length);
      ts.f32ToF16(h, f, f.length);
      return new Uint8Array(h.buffer);
    }
    case GGMLType.BF16: {
      const h = new Uint16Array(f.length);
      ts.f32ToBf16(h, f, f.length);
      return new Uint8Array(h.buffer);
    }
    case GGMLType.Q8_0: {
      const q = new Uint8Array(typeBytes(GGMLType.Q8_0, f.length));
      ts.quantizeQ8_0(q, f, f.length);
      return q;
    }
    case GGMLType.Q4_0: {
      // Q4_0 blocks: d = max|x| / -8 as ggml's reference quantiser, nibbles = round(x / d) + 8 clamped.
      const nb = f.length / 32;
      const out = new Uint8Array(nb * 18);
      const dv = new DataView(out.buffer);
      const h = new Uint16Array(1);
      for (let b = 0; b < nb; b++) {
        let max = 0;
        for (let j = 0; j < 32; j++) if (Math.abs(f[b * 32 + j]!) > Math.abs(max)) max = f[b * 32 + j]!;
        const d = max / -8;
        const id = d ? 1 / d : 0;
        ts.f32ToF16(h, new Float32Array([d]), 1);
        dv.setUint16(b * 18, h[0]!, true);
        for (let j = 0; j < 16; j++) {
          const lo = Math.min(15, Math.trunc(f[b * 32 + j]! * id + 8.5));
          const hi = Math.min(15, Math.trunc(f[b * 32 + j + 16]! * id + 8.5));
          out[b * 18 + 2 + j] = lo | (hi << 4);
        }
      }
      return out;
    }
  }
}

/** The activation a weight type's matmul takes, made from floats. */
function activation(type: GGMLType, x: Float32Array): Uint8Array {
  return encode(type === GGMLType.Q4_0 ? GGMLType.Q8_0 : type, x);
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const v of a) m = Math.max(m, Math.abs(v));
  return m;
}

/** Same values within a relative tolerance of the larger magnitude; logs the max difference. */
function close(label: string, got: Float32Array, want: Float32Array, rel: number): void {
  const d = maxDiff(got, want);
  const tol = rel * Math.max(1, maxAbs(want));
  if (!(d <= tol)) console.log(`${label}: maxdiff ${d.toExponential(2)} > tol ${tol.toExponential(2)}`);
  expect(d).toBeLessThanOrEqual(tol);
}

const kernelsFor = new Map<string, NativeKernels>();
function native(variant: number, threads: number): NativeKernels {
  const key = `${variant}/${threads}`;
  if (!kernelsFor.has(key)) kernelsFor.set(key, track(createNativeKernels(threads, variant)));
  return kernelsFor.get(key)!;
}

describe("library", () => {
  test("reports the CPU and a default variant it supports", () => {
    console.log(`CPU features: ${info.cpuFeatures}; variants: ${info.variants.map((v) => `${v.name}${v.supported ? "" : "(-)"}`).join(" ")}`);
    expect(info.variants[0]!.name).toBe("scalar");
    expect(info.defaultVariant).toBeGreaterThanOrEqual(0);
    expect(info.variants[info.defaultVariant]!.supported).toBe(true);
  });

  test.skipIf(process.arch !== "x64")("x86-64: the ssse3 variant is supported wherever the CPU has x86-64-v2, and tested here then", () => {
    const names = info.variants.map((v) => v.name);
    expect(names.slice(0, 5)).toEqual(["scalar", "x86_64", "ssse3", "avx2", "avx512"]);
    const v2 = ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"].every((f) => info.cpuFeatures.split(" ").includes(f));
    expect(supported.some((v) => v.name === "ssse3")).toBe(v2);
    // avx2 implies x86-64-v2: an AVX2 machine tests the ssse3 kernels too
    if (supported.some((v) => v.name === "avx2")) expect(v2).toBe(true);
  });
});

const MATMUL_TYPES: [GGMLType, string][] = [
  [GGMLType.F32, "F32"],
  [GGMLType.F16, "F16"],
  [GGMLType.BF16, "BF16"],
  [GGMLType.Q8_0, "Q8_0"],
  [GGMLType.Q4_0, "Q4_0"],
];

describe("matmul", () => {
  for (const [type, name] of MATMUL_TYPES) {
    const quant = type === GGMLType.Q8_0 || type === GGMLType.Q4_0;
    // n_in must be a multiple of the block; rows take every size of the list. 7 and 33 blocks: kernels
    // that take blocks in groups (ssse3: 4) have a tail. Quantized weights take 6 tokens: AVX2's Q4_0
    // batches of 4+ tokens over whole groups of 8 blocks (256 and 4096 values) take their own path,
    // 4 tokens and then 2.
    const nIns = quant ? [32, 64, 32 * 7, 32 * 8, 32 * 33, 4096] : [1, 31, 33, 4096];
    for (const nIn of nIns) {
      const rowsList = nIn === 4096 ? SIZES : [1, 31, 32, 33];
      for (const rows of rowsList) {
        const nTok = rows > 1000 ? 1 : quant ? 6 : 3;
        test(`${name} ${rows}x${nIn}, ${nTok} token(s), full and odd row ranges, every variant and 1-4 threads`, () => {
          const w = weights(type, rows, nIn, rows * 7 + nIn);
          const x = activation(type, rand(nTok * nIn, nIn + 3));
          const ranges: [number, number][] = [[0, rows]];
          if (rows >= 5) ranges.push([1, rows - 2], [3, Math.min(rows, 3 + 17)]);
          for (const [r0, r1] of ranges) {
            const ldo = r1 - r0 + 5; // a stride wider than the slice: the gap must stay untouched
            const want = new Float32Array(nTok * ldo).fill(7);
            ts.matmul(want, ldo, w, type, x, nIn, r0, r1, nTok);
            const ref = new Float32Array(nTok * ldo).fill(7);
            scalar.matmul(ref, ldo, w, type, x, nIn, r0, r1, nTok);
            close(`${name} scalar vs ts`, ref, want, 1e-5);
            for (const v of supported) {
              let first: Float32Array<ArrayBuffer> | null = null;
              for (const t of THREADS) {
                const got = new Float32Array(nTok * ldo).fill(7);
                native(v.index, t).matmul(got, ldo, w, type, x, nIn, r0, r1, nTok);
                close(`${name} ${v.name} t${t} [${r0},${r1})`, got, ref, quant ? 1e-5 : 1e-5);
                // every thread count computes each row with the same code: identical bits
                if (first) expect(got).toEqual(first);
                else first = got;
              }
            }
          }
        });
      }
    }
  }

  for (const [type, name] of MATMUL_TYPES) {
    test(`${name}: a column slice of a wider matrix (ldw) equals the same columns packed, every variant`, () => {
      const rows = 37, full = 4096, c0 = 1024, width = 2048;
      const quant = type === GGMLType.Q8_0 || type === GGMLType.Q4_0;
      const fullW = weights(type, rows, full, 5);
      const rowBytes = typeBytes(type, full), c0Bytes = typeBytes(type, c0), wBytes = typeBytes(type, width);
      const packed = new Uint8Array(rows * wBytes);
      for (let r = 0; r < rows; r++) packed.set(fullW.subarray(r * rowBytes + c0Bytes, r * rowBytes + c0Bytes + wBytes), r * wBytes);
      const x = activation(type, rand(2 * width, 9));
      const want = new Float32Array(2 * rows);
      ts.matmul(want, rows, packed, type, x, width, 0, rows, 2);
      const tsSlice = new Float32Array(2 * rows);
      ts.matmul(tsSlice, rows, fullW.subarray(c0Bytes), type, x, width, 0, rows, 2, rowBytes);
      expect(tsSlice).toEqual(want);
      for (const v of supported) {
        const k = native(v.index, 2);
        const a = new Float32Array(2 * rows), b = new Float32Array(2 * rows);
        k.matmul(a, rows, packed, type, x, width, 0, rows, 2);
        k.matmul(b, rows, fullW.subarray(c0Bytes), type, x, width, 0, rows, 2, rowBytes);
        expect(b).toEqual(a);
        close(`${name} slice ${v.name}`, b, want, quant ? 1e-5 : 1e-5);
      }
      expect(() => native(info.defaultVariant, 1).matmul(want, rows, fullW, type, x, width, 0, rows, 2, wBytes - 1)).toThrow(/ldw/);
    });
  }

  test("rejects bad shapes with clear errors", () => {
    const k = native(info.defaultVariant, 2);
    const w = new Uint8Array(18 * 4);
    const x = new Uint8Array(34 * 4);
    const out = new Float32Array(8);
    expect(() => k.matmul(out, 2, w, GGMLType.Q4_0, x, 33, 0, 2, 1)).toThrow(/not a multiple/);
    expect(() => k.matmul(out, 2, w, GGMLType.Q4_0, x, 32, 2, 1, 1)).toThrow(/row range/);
    expect(() => k.matmul(new Float32Array(8), 8, w, GGMLType.Q4_0, x, 32, 0, 8, 1)).toThrow(/w holds 72 bytes/);
    expect(() => k.matmul(out, 2, w, 3 as GGMLType, x, 32, 0, 2, 1)).toThrow(/type id 3 not supported/);
    expect(() => ts.matmul(out, 2, w, GGMLType.Q4_0, x, 33, 0, 2, 1)).toThrow(/not a multiple/);
  });
});

describe("quantisation and conversions", () => {
  for (const n of [32, 64, 4096]) {
    test(`Q8_0 quantise of ${n} values is bit-identical in every variant, TS included (ties to even)`, () => {
      const x = rand(n, n);
      // exact ties: 4 * 127/8 = 63.5 must round to 64, -2.5-like values to even
      x.set([8, 4, -4, 0.5 * (8 / 127), 1.5 * (8 / 127)], 0);
      const want = new Uint8Array(typeBytes(GGMLType.Q8_0, n));
      ts.quantizeQ8_0(want, x, n);
      for (const v of supported)
        for (const t of [1, 4]) {
          const got = new Uint8Array(want.length);
          native(v.index, t).quantizeQ8_0(got, x, n);
          expect(got).toEqual(want);
        }
      const q = new Int8Array(want.buffer);
      expect(q[2]).toBe(127);
      expect(q[3]).toBe(64); // 63.5 -> 64 (even)
      expect(q[4]).toBe(-64);
    });
  }

  test("Q8_0 activations: 4096 floats travel in 4352 bytes with MSE < 1e-4 (normal data)", () => {
    const n = 4096;
    const u1 = rand(n, 5), u2 = rand(n, 6);
    const x = new Float32Array(n).map((_, i) => Math.sqrt(-2 * Math.log((u1[i]! + 1) / 2 + 1e-12)) * Math.cos(Math.PI * (u2[i]! + 1)));
    const q = new Uint8Array(typeBytes(GGMLType.Q8_0, n));
    expect(q.byteLength).toBe(4352);
    const k = native(info.defaultVariant, 1);
    k.quantizeQ8_0(q, x, n);
    const back = new Float32Array(n);
    k.dequantize(back, q, GGMLType.Q8_0, n);
    let mse = 0;
    for (let i = 0; i < n; i++) mse += (back[i]! - x[i]!) ** 2;
    mse /= n;
    console.log(`Q8_0 round trip MSE on N(0,1): ${mse.toExponential(3)}`);
    expect(mse).toBeLessThan(1e-4);
  });

  for (const [type, name] of MATMUL_TYPES) {
    test(`dequantize ${name} is exact in every variant`, () => {
      const n = 4096;
      const data = weights(type, 1, n, 99);
      const want = new Float32Array(n);
      ts.dequantize(want, data, type, n);
      for (const v of supported) {
        const got = new Float32Array(n);
        native(v.index, 3).dequantize(got, data, type, n);
        expect(got).toEqual(want);
      }
    });
  }

  test("f32 -> f16 / bf16 and back: exact, every special value, every variant", () => {
    const specials = [0, -0, 1, -1, 65504, 65519, 65520, 1e9, -1e9, 2 ** -24, 2 ** -25, 1.5 * 2 ** -24, 2 ** -14, Infinity, -Infinity, NaN, 3.14159, 1 / 3];
    const x = new Float32Array([...specials, ...rand(4096 - specials.length, 77).map((v) => v * 1000)]);
    const n = x.length;
    const h = new Uint16Array(n), bf = new Uint16Array(n), back = new Float32Array(n);
    ts.f32ToF16(h, x, n);
    ts.f32ToBf16(bf, x, n);
    ts.f16ToF32(back, h, n);
    expect(Array.from(h.slice(0, 14))).toEqual([0, 0x8000, 0x3c00, 0xbc00, 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x0001, 0x0000, 0x0002, 0x0400, 0x7c00]);
    for (const v of supported)
      for (const t of [1, 4]) {
        const k = native(v.index, t);
        for (const size of SIZES) {
          const gh = new Uint16Array(size), gb = new Uint16Array(size), gf = new Float32Array(size);
          k.f32ToF16(gh, x, size);
          k.f32ToBf16(gb, x, size);
          k.f16ToF32(gf, h, size);
          expect(gh).toEqual(h.slice(0, size));
          expect(gb).toEqual(bf.slice(0, size));
          expect(new Uint32Array(gf.buffer)).toEqual(new Uint32Array(back.slice(0, size).buffer));
        }
      }
  });
});

describe("normalisation, activations, element-wise", () => {
  for (const n of SIZES) {
    test(`n = ${n}: rmsnorm, softmax, silu, gelu, swiglu, add, mul, scale match the references`, () => {
      const rows = 3;
      const x = rand(n * rows, n), y = rand(n * rows, n + 1).map((v) => v * 4), g = rand(n, n + 2);
      const cases: [string, (k: typeof ts, out: Float32Array) => void, number][] = [
        ["rmsnorm", (k, o) => k.rmsnorm(o, x, g, n, rows, 1e-5), 1e-6],
        ["rmsnorm (no weight)", (k, o) => k.rmsnorm(o, x, null, n, rows, 1e-6), 1e-6],
        ["softmax", (k, o) => k.softmax(o, y, n, rows), 1e-6],
        ["silu", (k, o) => k.silu(o, y, n * rows), 1e-6],
        ["gelu", (k, o) => k.gelu(o, y, n * rows), 1e-6],
        ["swiglu", (k, o) => k.swiglu(o, y, x, n * rows), 1e-6],
        ["add", (k, o) => k.add(o, x, y, n * rows), 0],
        ["mul", (k, o) => k.mul(o, x, y, n * rows), 0],
        ["scale", (k, o) => k.scale(o, x, -0.37, n * rows), 0],
      ];
      for (const [name, run, rel] of cases) {
        const want = new Float32Array(n * rows);
        run(ts, want);
        for (const v of supported)
          for (const t of THREADS) {
            const got = new Float32Array(n * rows);
            run(native(v.index, t) as unknown as typeof ts, got);
            close(`${name} ${v.name} t${t}`, got, want, rel);
          }
      }
    });
  }
});

describe("RoPE", () => {
  for (const [mode, label] of [[RopeMode.Norm, "adjacent pairs"], [RopeMode.Neox, "NEOX"]] as const) {
    for (const [heads, hd, nRot] of [[1, 32, 32], [4, 64, 64], [3, 128, 96], [33, 2, 2]] as const) {
      test(`${label}: ${heads} heads x ${hd}, n_rot ${nRot}, 5 tokens at scattered positions`, () => {
        const nTok = 5;
        const x = rand(nTok * heads * hd, hd + heads);
        const pos = new Int32Array([0, 1, 7, 31, 4095]);
        const freqs = new Float32Array(nRot / 2).map((_, j) => Math.fround(10000 ** (-2 * j / nRot)));
        const want = new Float32Array(x.length);
        ts.rope(want, x, pos, freqs, nTok, heads, hd, nRot, mode);
        for (const v of supported)
          for (const t of THREADS) {
            const got = new Float32Array(x.length);
            native(v.index, t).rope(got, x, pos, freqs, nTok, heads, hd, nRot, mode);
            close(`rope ${v.name} t${t}`, got, want, 1e-5);
            // in place gives the same
            const inPlace = x.slice();
            native(v.index, t).rope(inPlace, inPlace, pos, freqs, nTok, heads, hd, nRot, mode);
            expect(inPlace).toEqual(got);
          }
      });
    }
  }
});

describe("attention", () => {
  for (const kvType of [GGMLType.F32, GGMLType.F16]) {
    for (const [heads, kvHeads, hd, nKv] of [[8, 2, 64, 33], [4, 4, 32, 1], [6, 3, 16, 4096], [32, 8, 128, 31]] as const) {
      test(`${kvType === GGMLType.F32 ? "F32" : "F16"} cache: ${heads} heads / ${kvHeads} KV heads x ${hd}, ${nKv} positions, several queries`, () => {
        const stride = kvHeads * hd + 3; // a padded cache row
        const kf = rand(nKv * stride, hd * 3 + 1), vf = rand(nKv * stride, hd * 3 + 2);
        const k = kvType === GGMLType.F32 ? kf : encodeHalf(kf);
        const v = kvType === GGMLType.F32 ? vf : encodeHalf(vf);
        const pos = new Int32Array([nKv - 1, 0, Math.floor(nKv / 2)]);
        const nQ = pos.length;
        const q = rand(nQ * heads * hd, heads);
        const scale = 1 / Math.sqrt(hd);
        const want = new Float32Array(nQ * heads * hd);
        ts.attention(want, q, k, v, kvType, pos, nQ, heads, kvHeads, hd, stride, scale);
        for (const vr of supported)
          for (const t of THREADS) {
            const got = new Float32Array(want.length);
            native(vr.index, t).attention(got, q, k, v, kvType, pos, nQ, heads, kvHeads, hd, stride, scale);
            close(`attention ${vr.name} t${t}`, got, want, 1e-5);
          }
        // position 0 sees only itself: the output is exactly v at position 0 of its KV head
        const row = want.subarray(1 * heads * hd, 1 * heads * hd + hd);
        const v0 = new Float32Array(hd);
        if (kvType === GGMLType.F32) v0.set(vf.subarray(0, hd));
        else ts.f16ToF32(v0, (v as Uint16Array).subarray(0, hd), hd);
        close("attention at position 0", row, v0, 1e-6);
      });
    }
  }
});

function encodeHalf(f: Float32Array): Uint16Array {
  const h = new Uint16Array(f.length);
  ts.f32ToF16(h, f, f.length);
  return h;
}

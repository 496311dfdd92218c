// `dairllm-worker selftest`: every native kernel variant this CPU supports against the references
// (the native scalar variant and the TypeScript kernels), on odd sizes. Prints the CPU features and
// the variant chosen; returns false on any mismatch.
import { createNativeKernels, nativeInfo } from "./native/ffi";
import { createTsKernels } from "./native/ts-kernels";
import { GGMLType, type Kernels, RopeMode, typeBytes } from "./native/types";

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  return new Float32Array(n).map(() => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 2 ** 31 - 1) * scale;
  });
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let m = 0, scale = 1;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!) / scale;
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** Weights of a type from floats, through the reference kernels. */
function encode(ts: Kernels, type: GGMLType, f: Float32Array): Uint8Array {
  if (type === GGMLType.F32) return new Uint8Array(f.buffer.slice(0));
  if (type === GGMLType.Q8_0) {
    const q = new Uint8Array(typeBytes(type, f.length));
    ts.quantizeQ8_0(q, f, f.length);
    return q;
  }
  if (type === GGMLType.Q4_0) {
    // random nibbles and scales: every bit pattern is a valid Q4_0 block
    const out = new Uint8Array(typeBytes(type, f.length));
    for (let b = 0; b < out.length; b += 18) {
      out[b] = 0x00;
      out[b + 1] = 0x20; // fp16 2^-7
      for (let j = 2; j < 18; j++) out[b + j] = (f[(b / 18) * 32 + j]! * 127 + 128) & 255;
    }
    return out;
  }
  const h = new Uint16Array(f.length);
  if (type === GGMLType.F16) ts.f32ToF16(h, f, f.length);
  else ts.f32ToBf16(h, f, f.length);
  return new Uint8Array(h.buffer);
}

export function selftest(log: (line: string) => void): boolean {
  const info = nativeInfo();
  const ts = createTsKernels();
  log(`library: ${info.path}`);
  log(`CPU features: ${info.cpuFeatures}`);
  log(`variants: ${info.variants.map((v) => `${v.name}${v.supported ? "" : " (not supported here)"}`).join(", ")}; chosen: ${info.variants[info.defaultVariant]?.name ?? "none"}`);
  const scalar = createNativeKernels(1, 0);
  let ok = true;
  const check = (what: string, d: number, tol: number) => {
    if (!(d <= tol)) {
      ok = false;
      log(`  FAIL ${what}: max relative difference ${d.toExponential(2)} > ${tol}`);
    }
  };
  for (const v of info.variants.filter((x) => x.supported)) {
    const k = createNativeKernels(3, v.index);
    const before = ok;
    for (const [type, name] of [[GGMLType.F32, "F32"], [GGMLType.F16, "F16"], [GGMLType.BF16, "BF16"], [GGMLType.Q8_0, "Q8_0"], [GGMLType.Q4_0, "Q4_0"]] as const) {
      for (const [rows, nIn] of [[33, 4096], [31, 64], [1, 32]] as const) {
        const w = encode(ts, type, rand(rows * nIn, rows + nIn, 0.05));
        const xf = rand(2 * nIn, nIn);
        const x = type === GGMLType.F32 ? xf : encode(ts, type === GGMLType.Q4_0 ? GGMLType.Q8_0 : type, xf);
        const [a, b, c] = [0, 0, 0].map(() => new Float32Array(2 * rows));
        k.matmul(a!, rows, w, type, x, nIn, 0, rows, 2);
        scalar.matmul(b!, rows, w, type, x, nIn, 0, rows, 2);
        ts.matmul(c!, rows, w, type, x, nIn, 0, rows, 2);
        check(`${v.name} matmul ${name} ${rows}x${nIn} vs scalar`, maxRel(a!, b!), 1e-5);
        check(`${v.name} matmul ${name} ${rows}x${nIn} vs TypeScript`, maxRel(a!, c!), 1e-5);
      }
    }
    for (const n of [32, 4096]) {
      const x = rand(n, n);
      const [qa, qb] = [new Uint8Array(typeBytes(GGMLType.Q8_0, n)), new Uint8Array(typeBytes(GGMLType.Q8_0, n))];
      k.quantizeQ8_0(qa, x, n);
      ts.quantizeQ8_0(qb, x, n);
      if (!qa.every((b, i) => b === qb[i])) {
        ok = false;
        log(`  FAIL ${v.name} quantize_q8_0 (${n}): not bit-identical to the reference`);
      }
    }
    for (const n of [1, 33, 4095]) {
      const x = rand(3 * n, n), y = rand(3 * n, n + 1, 4), g = rand(n, 7);
      const [a, b] = [new Float32Array(3 * n), new Float32Array(3 * n)];
      k.rmsnorm(a, x, g, n, 3, 1e-5);
      ts.rmsnorm(b, x, g, n, 3, 1e-5);
      check(`${v.name} rmsnorm ${n}`, maxRel(a, b), 1e-6);
      k.swiglu(a, y, x, 3 * n);
      ts.swiglu(b, y, x, 3 * n);
      check(`${v.name} swiglu ${n}`, maxRel(a, b), 1e-6);
      k.softmax(a, y, n, 3);
      ts.softmax(b, y, n, 3);
      check(`${v.name} softmax ${n}`, maxRel(a, b), 1e-6);
    }
    {
      const heads = 8, kvh = 2, hd = 64, nKv = 33, stride = kvh * hd;
      const q = rand(3 * heads * hd, 3), kc = rand(nKv * stride, 4), vc = rand(nKv * stride, 5);
      const pos = new Int32Array([0, 17, 32]), freqs = new Float32Array(hd / 2).map((_, j) => 10000 ** (-2 * j / hd));
      const [a, b] = [new Float32Array(q.length), new Float32Array(q.length)];
      for (const mode of [RopeMode.Norm, RopeMode.Neox]) {
        k.rope(a, q, pos, freqs, 3, heads, hd, hd, mode);
        ts.rope(b, q, pos, freqs, 3, heads, hd, hd, mode);
        check(`${v.name} rope`, maxRel(a, b), 1e-5);
      }
      k.attention(a, q, kc, vc, GGMLType.F32, pos, 3, heads, kvh, hd, stride, 0.125);
      ts.attention(b, q, kc, vc, GGMLType.F32, pos, 3, heads, kvh, hd, stride, 0.125);
      check(`${v.name} attention`, maxRel(a, b), 1e-5);
    }
    log(`  ${v.name.padEnd(8)} ${ok === before ? "ok" : "FAILED"}`);
    k.close();
  }
  scalar.close();
  log(ok ? "selftest passed" : "selftest FAILED");
  return ok;
}

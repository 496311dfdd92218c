// Kernel benchmark: matrix x vector for Q4_0, Q8_0 and F16 on matrices of >= 100 MB, with 1 and 2
// threads, beside this machine's read bandwidth measured in the same run (a native probe that reads
// the same buffer with the widest loads); then the original design's baseline shapes beside its
// NumPy timings.
//
//   bun scripts/bench-kernels.ts [--quick] [--variant NAME]
//
// Every figure is the best of several runs, and each matvec run is paired with a probe run of the
// same buffer, so the ratio compares like with like (same pages, same moment).
import { ensureNative } from "./build-native";
import { createNativeKernels, nativeInfo, type NativeKernels } from "../src/native/ffi";
import { GGMLType, RopeMode, typeBytes } from "../src/native/types";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const vi = args.indexOf("--variant");

ensureNative();
const info = nativeInfo();
const variant = vi >= 0 ? info.variants.findIndex((v) => v.name === args[vi + 1]) : -1;
if (vi >= 0 && (variant < 0 || !info.variants[variant]!.supported)) {
  console.error(`--variant must be one of: ${info.variants.filter((v) => v.supported).map((v) => v.name).join(", ")}`);
  process.exit(2);
}

/** xorshift32 fill: fast, deterministic, no zero pages. */
function fillRandom(buf: Uint8Array, seed = 0x9e3779b9): void {
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >> 2);
  let s = seed >>> 0;
  for (let i = 0; i < u32.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    u32[i] = s >>> 0;
  }
}

function randomFloats(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2;
  }
  return out;
}

/** A valid matrix of `type`: random quants, fp16 scales set to 2^-8 (0x1c00) so sums stay finite. */
function makeMatrix(type: GGMLType, rows: number, cols: number): Uint8Array {
  const bytes = rows * typeBytes(type, cols);
  const m = new Uint8Array(bytes);
  fillRandom(m);
  const dv = new DataView(m.buffer);
  if (type === GGMLType.Q4_0 || type === GGMLType.Q8_0) {
    const bb = type === GGMLType.Q4_0 ? 18 : 34;
    for (let o = 0; o < bytes; o += bb) dv.setUint16(o, 0x1c00, true);
  } else if (type === GGMLType.F16) {
    for (let o = 0; o < bytes; o += 2) dv.setUint16(o, 0x3000 | (dv.getUint16(o, true) & 0x83ff), true);
  }
  return m;
}

function activation(k: NativeKernels, type: GGMLType, x: Float32Array): Uint8Array | Uint16Array | Float32Array {
  if (type === GGMLType.Q4_0 || type === GGMLType.Q8_0) {
    const q = new Uint8Array(typeBytes(GGMLType.Q8_0, x.length));
    k.quantizeQ8_0(q, x, x.length);
    return q;
  }
  if (type === GGMLType.F16) {
    const h = new Uint16Array(x.length);
    k.f32ToF16(h, x, x.length);
    return h;
  }
  return x;
}

function best(runs: number, fn: () => void): number {
  let b = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = Bun.nanoseconds();
    fn();
    b = Math.min(b, (Bun.nanoseconds() - t0) / 1e9);
  }
  return b;
}

const pad = (s: string, n: number) => s.padEnd(n);
const num = (x: number, d = 1) => x.toFixed(d).padStart(7);

console.log(`dairllm kernel benchmark — CPU features: ${info.cpuFeatures}`);
console.log(`variants: ${info.variants.map((v) => `${v.name}${v.supported ? "" : " (unsupported)"}`).join(", ")}; using ${info.variants[variant === -1 ? info.defaultVariant : variant]!.name}`);
console.log(`command: bun scripts/bench-kernels.ts ${args.join(" ")}`.trimEnd());
console.log();

// ---- 1. matrix x vector against measured read bandwidth ------------------------------------------
const COLS = 16384;
const shapes: [GGMLType, string, number][] = [
  [GGMLType.Q4_0, "Q4_0", quick ? 2816 : 11264],
  [GGMLType.Q8_0, "Q8_0", quick ? 1536 : 6144],
  [GGMLType.F16, "F16", quick ? 1024 : 4096],
];
const runs = quick ? 3 : 12;
const threadCounts = [1, 2];
const kernels = new Map(threadCounts.map((t) => [t, createNativeKernels(t, variant)]));

console.log("1. matrix x vector (GB/s of weights read) vs read bandwidth measured on the same buffer");
console.log(`${pad("type", 6)}${pad("matrix", 16)}${pad("MB", 8)}${pad("thr", 5)}${pad("matvec GB/s", 13)}${pad("probe GB/s", 12)}ratio   target`);
for (const [type, name, rows] of shapes) {
  const w = makeMatrix(type, rows, COLS);
  const x = randomFloats(COLS);
  const out = new Float32Array(rows);
  const probeBytes = w.byteLength - (w.byteLength % 256);
  for (const t of threadCounts) {
    const k = kernels.get(t)!;
    const xa = activation(k, type, x);
    k.matmul(out, rows, w, type, xa, COLS, 0, rows, 1); // warm-up: page in, wake threads
    let mv = Infinity;
    let probe = Infinity;
    for (let i = 0; i < runs; i++) {
      probe = Math.min(probe, k.probeRead(w.subarray(0, probeBytes), 1).seconds * (w.byteLength / probeBytes));
      mv = Math.min(mv, best(1, () => k.matmul(out, rows, w, type, xa, COLS, 0, rows, 1)));
    }
    const gbMv = w.byteLength / mv / 1e9;
    const gbProbe = w.byteLength / probe / 1e9;
    const ratio = gbMv / gbProbe;
    const target = type === GGMLType.F16 ? "-" : `${t === 1 ? ">= 0.90" : ">= 0.80"} ${ratio >= (t === 1 ? 0.9 : 0.8) ? "met" : "MISSED"}`;
    console.log(`${pad(name, 6)}${pad(`${rows} x ${COLS}`, 16)}${pad((w.byteLength / 1e6).toFixed(1), 8)}${pad(String(t), 5)}${pad(num(gbMv), 13)}${pad(num(gbProbe), 12)}${ratio.toFixed(3)}   ${target}`);
  }
}
console.log();

// ---- 2. the original design's baseline shapes -----------------------------------------------------
console.log("2. the design document's baseline shapes (NumPy timings from the design) — ms, best of runs");
console.log(`${pad("operation", 52)}${pad("NumPy ms", 10)}${pad("1 thr ms", 10)}${pad("x", 8)}${pad("2 thr ms", 10)}x`);
function row(label: string, numpyMs: number, fn: (k: NativeKernels) => void): void {
  const cells: string[] = [];
  for (const t of threadCounts) {
    const k = kernels.get(t)!;
    fn(k);
    const ms = best(runs, () => fn(k)) * 1e3;
    cells.push(pad(ms.toFixed(3), 10), pad(Number.isNaN(numpyMs) ? "-" : `${(numpyMs / ms).toFixed(1)}x`, 8));
  }
  console.log(`${pad(label, 52)}${pad(Number.isNaN(numpyMs) ? "-" : numpyMs.toFixed(3), 10)}${cells.join("")}`);
}
{
  const x = randomFloats(128 * 4096);
  const g = randomFloats(4096, 7);
  const out = new Float32Array(128 * 4096);
  row("RMS norm (128, 4096)", 0.431, (k) => k.rmsnorm(out, x, g, 4096, 128, 1e-5));
}
for (const [type, name] of [[GGMLType.F32, "F32"], [GGMLType.Q8_0, "Q8_0"], [GGMLType.Q4_0, "Q4_0"]] as const) {
  const w = makeMatrix(type, 4096, 4096);
  if (type === GGMLType.F32) w.set(new Uint8Array(randomFloats(4096 * 4096, 3).buffer));
  const x = randomFloats(4096);
  const out = new Float32Array(4096);
  const k1 = kernels.get(1)!;
  const xa = activation(k1, type, x);
  row(`matmul (1,4096) x (4096,4096), ${name} weights`, 1.253, (k) => k.matmul(out, 4096, w, type, xa, 4096, 0, 4096, 1));
}
{
  const heads = 32, hd = 128, seq = 128;
  const q = randomFloats(seq * heads * hd, 11), kc = randomFloats(seq * heads * hd, 12), vc = randomFloats(seq * heads * hd, 13);
  const out = new Float32Array(seq * heads * hd);
  const pos = new Int32Array(seq).fill(seq - 1); // every query sees all 128 keys, as the NumPy baseline
  row("attention, seq 128 (32 heads x 128, all keys)", 10.901, (k) => k.attention(out, q, kc, vc, GGMLType.F32, pos, seq, heads, heads, hd, heads * hd, 1 / Math.sqrt(hd)));
  const freqs = new Float32Array(hd / 2).map((_, j) => 10000 ** (-2 * j / hd));
  const tokPos = new Int32Array(seq).map((_, i) => i);
  row("  (for scale: RoPE on q, 128 tokens x 32 heads)", NaN, (k) => k.rope(q, q, tokPos, freqs, seq, heads, hd, hd, RopeMode.Norm));
}
for (const [type, name] of [[GGMLType.F32, "F32"], [GGMLType.Q4_0, "Q4_0"]] as const) {
  const dim = 4096, hidden = 11008;
  const wg = makeMatrix(type, hidden, dim), wu = makeMatrix(type, hidden, dim), wd = makeMatrix(type, dim, hidden);
  if (type === GGMLType.F32) for (const m of [wg, wu, wd]) m.set(new Uint8Array(randomFloats(m.byteLength / 4, m.byteLength).buffer));
  const x = randomFloats(dim, 5);
  const g = new Float32Array(hidden), u = new Float32Array(hidden), h = new Float32Array(hidden), out = new Float32Array(dim);
  row(`feed-forward, 1 token (4096 -> 11008 -> 4096), ${name}`, 13.839, (k) => {
    const xa = activation(k, type, x);
    k.matmul(g, hidden, wg, type, xa, dim, 0, hidden, 1);
    k.matmul(u, hidden, wu, type, xa, dim, 0, hidden, 1);
    k.swiglu(h, g, u, hidden);
    k.matmul(out, dim, wd, type, activation(k, type, h), hidden, 0, dim, 1);
  });
}
for (const k of kernels.values()) k.close();

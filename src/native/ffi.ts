// The only module that imports bun:ffi. It finds libdairllm, binds its symbols once, and wraps them
// as `Kernels`: TypedArrays and mmap views are passed as raw pointers (zero-copy, nothing allocated
// per call), and the library's status codes become Errors naming the kernel and the problem.
import { dlopen, FFIType, ptr as pointerOf, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { type Bytes, type GGMLType, type Kernels, type RopeMode, typeBytes, traits } from "./types";

const { ptr, i32, i64, f32, void: v, cstring } = FFIType;

const SYMBOLS = {
  dl_abi_version: { args: [], returns: i32 },
  dl_variant_count: { args: [], returns: i32 },
  dl_variant_name: { args: [i32], returns: cstring },
  dl_variant_supported: { args: [i32], returns: i32 },
  dl_variant_default: { args: [], returns: i32 },
  dl_cpu_features: { args: [], returns: cstring },
  dl_ctx_create: { args: [i32, i32], returns: ptr },
  dl_ctx_destroy: { args: [ptr], returns: v },
  dl_ctx_threads: { args: [ptr], returns: i32 },
  dl_type_block_values: { args: [i32], returns: i64 },
  dl_type_block_bytes: { args: [i32], returns: i64 },
  dl_type_activation: { args: [i32], returns: i32 },
  dl_split_range: { args: [ptr, i64, i64, i64], returns: i32 },
  dl_matmul: { args: [ptr, i64, ptr, i64, i32, ptr, i64, i64, i64, i64, ptr], returns: i32 },
  dl_rmsnorm: { args: [ptr, ptr, ptr, i64, i64, f32, ptr], returns: i32 },
  dl_softmax: { args: [ptr, ptr, i64, i64, ptr], returns: i32 },
  dl_silu: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_gelu: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_swiglu: { args: [ptr, ptr, ptr, i64, ptr], returns: i32 },
  dl_add: { args: [ptr, ptr, ptr, i64, ptr], returns: i32 },
  dl_mul: { args: [ptr, ptr, ptr, i64, ptr], returns: i32 },
  dl_scale: { args: [ptr, ptr, f32, i64, ptr], returns: i32 },
  dl_rope: { args: [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32, ptr], returns: i32 },
  dl_attention: { args: [ptr, ptr, ptr, ptr, i32, ptr, i64, i64, i64, i64, i64, f32, ptr], returns: i32 },
  dl_quantize_q8_0: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_dequantize: { args: [ptr, ptr, i32, i64, ptr], returns: i32 },
  dl_f32_to_f16: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_f16_to_f32: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_f32_to_bf16: { args: [ptr, ptr, i64, ptr], returns: i32 },
  dl_probe_read: { args: [ptr, ptr, i64, i32, ptr], returns: i32 },
  dl_release_pages: { args: [ptr, i64], returns: i32 },
  dl_copy_rows: { args: [ptr, ptr, i64, i64, i64, ptr], returns: i32 },
} as const;

/** Must equal DL_ABI_VERSION in cpp/dairllm.h. */
export const ABI_VERSION = 3;

const ERRORS: Record<number, string> = {
  [-1]: "a required pointer is null",
  [-2]: "a size is zero, negative or not a multiple of the block size",
  [-3]: "the row range is empty or reversed, or ldo is smaller than the range",
  [-4]: "unsupported type",
  [-5]: "an argument is out of its domain",
};

/** The native kernels trust their sizes, so every wrapper checks the buffers against them first. */
function need(kernel: string, what: string, have: number, want: number): void {
  if (!(have >= want)) throw new Error(`native ${kernel}: ${what} holds ${have} bytes, the sizes given need ${want}`);
}

function check(kernel: string, status: number): void {
  if (status !== 0) throw new Error(`native ${kernel}: ${ERRORS[status] ?? `error ${status}`}`);
}

/** The address of a view's first byte: for buffers that must be aligned (O_DIRECT reads). */
export function addressOf(view: Uint8Array): number {
  return pointerOf(view);
}

type Lib = ReturnType<typeof dlopen<typeof SYMBOLS>>["symbols"];

let embeddedPath: string | null = null;
/** Set by the entry point of a compiled binary to the library it embeds (`with { type: "file" }`). */
export function setEmbeddedLibrary(path: string): void {
  embeddedPath = path;
}

/** The host's library directory name in build/native, e.g. "x86_64-linux". */
export function hostLibDir(): string {
  const arch = process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "aarch64" : process.arch;
  return `${arch}-linux`;
}

/** Where the library is looked for, in order. */
export function libraryCandidates(): string[] {
  // An explicit DAIRLLM_LIB is the only candidate: a wrong path must not silently load another library.
  if (process.env.DAIRLLM_LIB) return [process.env.DAIRLLM_LIB];
  const out: string[] = [];
  if (embeddedPath) out.push(embeddedPath);
  out.push(join(import.meta.dir, "..", "..", "build", "native", hostLibDir(), "lib", "libdairllm.so"));
  return out;
}

let lib: Lib | null = null;
let libPath = "";

/** Opens the library once; throws with every path tried when none loads. */
export function openLibrary(): { symbols: Lib; path: string } {
  if (lib) return { symbols: lib, path: libPath };
  const tried: string[] = [];
  for (const path of libraryCandidates()) {
    if (!path.startsWith("/$bunfs/") && !existsSync(path)) {
      tried.push(`${path} (missing)`);
      continue;
    }
    try {
      const opened = dlopen(path, SYMBOLS).symbols;
      const abi = opened.dl_abi_version();
      if (abi !== ABI_VERSION) {
        tried.push(`${path} (ABI ${abi}, expected ${ABI_VERSION}: rebuild with \`bun run build:native\`)`);
        continue;
      }
      lib = opened;
      libPath = path;
      return { symbols: lib, path };
    } catch (e) {
      tried.push(`${path} (${(e as Error).message})`);
    }
  }
  throw new Error(`libdairllm could not be loaded; tried:\n  ${tried.join("\n  ")}`);
}

export interface VariantInfo {
  index: number;
  name: string;
  supported: boolean;
}

export function nativeInfo(): { path: string; cpuFeatures: string; variants: VariantInfo[]; defaultVariant: number } {
  const { symbols: s, path } = openLibrary();
  const variants: VariantInfo[] = [];
  for (let i = 0; i < s.dl_variant_count(); i++) {
    variants.push({ index: i, name: String(s.dl_variant_name(i)), supported: s.dl_variant_supported(i) === 1 });
  }
  return { path, cpuFeatures: String(s.dl_cpu_features()), variants, defaultVariant: s.dl_variant_default() };
}

/** Sizes the library reports for a type, to check the TS mirror (types.ts) against the C structs. */
export function nativeTypeInfo(type: number): { blockValues: number; blockBytes: number; activation: number } {
  const { symbols: s } = openLibrary();
  return {
    blockValues: Number(s.dl_type_block_values(type)),
    blockBytes: Number(s.dl_type_block_bytes(type)),
    activation: s.dl_type_activation(type),
  };
}

export function nativeSplitRange(n: number, nth: number, ith: number): [number, number] {
  const { symbols: s } = openLibrary();
  const out = new BigInt64Array(2);
  check("split_range", s.dl_split_range(out, n, nth, ith));
  return [Number(out[0]), Number(out[1])];
}

export interface NativeKernels extends Kernels {
  readonly variant: string;
  /** Best seconds of one full read of buf, with the context's threads; and a checksum. */
  probeRead(buf: Uint8Array, iters: number): { seconds: number; checksum: number };
  /** Stops the thread pool; the object must not be used afterwards. */
  close(): void;
}

/** Kernels backed by a native context with `threads` threads and the given variant (-1 = best). */
export function createNativeKernels(threads: number, variant = -1): NativeKernels {
  const { symbols: s } = openLibrary();
  if (variant === -1 && s.dl_variant_default() === -1) {
    throw new Error(`DAIRLLM_VARIANT=${process.env.DAIRLLM_VARIANT} is not a variant this CPU supports (${nativeInfo().variants.filter((x) => x.supported).map((x) => x.name).join(", ")})`);
  }
  const ctx = s.dl_ctx_create(threads, variant) as Pointer | null;
  if (!ctx) throw new Error(`native context with ${threads} threads and variant ${variant} could not be created`);
  const variantName = String(s.dl_variant_name(variant === -1 ? s.dl_variant_default() : variant));
  const probeOut = new Float64Array(2);
  return {
    name: `native:${variantName}`,
    variant: variantName,
    threads: s.dl_ctx_threads(ctx),
    matmul(out: Float32Array, ldo: number, w: Bytes, wtype: GGMLType, x: Bytes, nIn: number, r0: number, r1: number, nTok: number, ldw = 0) {
      if (nTok >= 1 && r1 > r0 && r0 >= 0 && ldo >= r1 - r0) {
        const rowBytes = typeBytes(wtype, nIn);
        if (ldw !== 0 && ldw < rowBytes) throw new Error(`native matmul: ldw ${ldw} is less than a row of ${rowBytes} bytes`);
        need("matmul", "out", out.byteLength, 4 * ((nTok - 1) * ldo + (r1 - r0)));
        need("matmul", "w", w.byteLength, (r1 - 1) * (ldw || rowBytes) + rowBytes);
        need("matmul", "x", x.byteLength, nTok * typeBytes(traits(wtype).activation, nIn));
      }
      check("matmul", s.dl_matmul(out, ldo, w, ldw, wtype, x, nIn, r0, r1, nTok, ctx));
    },
    rmsnorm(out, x, w, n, nRows, eps) {
      need("rmsnorm", "out", out.byteLength, 4 * n * nRows);
      need("rmsnorm", "x", x.byteLength, 4 * n * nRows);
      if (w) need("rmsnorm", "w", w.byteLength, 4 * n);
      check("rmsnorm", s.dl_rmsnorm(out, x, w, n, nRows, eps, ctx));
    },
    softmax(out, x, n, nRows) {
      need("softmax", "out", out.byteLength, 4 * n * nRows);
      need("softmax", "x", x.byteLength, 4 * n * nRows);
      check("softmax", s.dl_softmax(out, x, n, nRows, ctx));
    },
    silu(out, x, n) {
      need("silu", "out", out.byteLength, 4 * n);
      need("silu", "x", x.byteLength, 4 * n);
      check("silu", s.dl_silu(out, x, n, ctx));
    },
    gelu(out, x, n) {
      need("gelu", "out", out.byteLength, 4 * n);
      need("gelu", "x", x.byteLength, 4 * n);
      check("gelu", s.dl_gelu(out, x, n, ctx));
    },
    swiglu(out, gate, up, n) {
      need("swiglu", "out", out.byteLength, 4 * n);
      need("swiglu", "gate", gate.byteLength, 4 * n);
      need("swiglu", "up", up.byteLength, 4 * n);
      check("swiglu", s.dl_swiglu(out, gate, up, n, ctx));
    },
    add(out, a, b, n) {
      need("add", "out", out.byteLength, 4 * n);
      need("add", "a", a.byteLength, 4 * n);
      need("add", "b", b.byteLength, 4 * n);
      check("add", s.dl_add(out, a, b, n, ctx));
    },
    mul(out, a, b, n) {
      need("mul", "out", out.byteLength, 4 * n);
      need("mul", "a", a.byteLength, 4 * n);
      need("mul", "b", b.byteLength, 4 * n);
      check("mul", s.dl_mul(out, a, b, n, ctx));
    },
    scale(out, x, k, n) {
      need("scale", "out", out.byteLength, 4 * n);
      need("scale", "x", x.byteLength, 4 * n);
      check("scale", s.dl_scale(out, x, k, n, ctx));
    },
    rope(out, x, pos, freqs, nTok, nHeads, headDim, nRot, mode: RopeMode) {
      need("rope", "out", out.byteLength, 4 * nTok * nHeads * headDim);
      need("rope", "x", x.byteLength, 4 * nTok * nHeads * headDim);
      need("rope", "pos", pos.byteLength, 4 * nTok);
      need("rope", "freqs", freqs.byteLength, 4 * Math.floor(nRot / 2));
      check("rope", s.dl_rope(out, x, pos, freqs, nTok, nHeads, headDim, nRot, mode, ctx));
    },
    attention(out, q, k, vv, kvType, pos, nQ, nHeads, nKvHeads, headDim, kvStride, scale) {
      need("attention", "out", out.byteLength, 4 * nQ * nHeads * headDim);
      need("attention", "q", q.byteLength, 4 * nQ * nHeads * headDim);
      need("attention", "pos", pos.byteLength, 4 * nQ);
      let maxPos = 0;
      for (let i = 0; i < nQ && i < pos.length; i++) maxPos = Math.max(maxPos, pos[i]!);
      const kvBytes = (maxPos + 1) * kvStride * (kvType === 1 ? 2 : 4);
      need("attention", "k", k.byteLength, kvBytes);
      need("attention", "v", vv.byteLength, kvBytes);
      check("attention", s.dl_attention(out, q, k, vv, kvType, pos, nQ, nHeads, nKvHeads, headDim, kvStride, scale, ctx));
    },
    quantizeQ8_0(out, x, n) {
      need("quantize_q8_0", "out", out.byteLength, Math.floor(n / 32) * 34);
      need("quantize_q8_0", "x", x.byteLength, 4 * n);
      check("quantize_q8_0", s.dl_quantize_q8_0(out, x, n, ctx));
    },
    dequantize(out, x, type, n) {
      need("dequantize", "out", out.byteLength, 4 * n);
      need("dequantize", "x", x.byteLength, typeBytes(type, n));
      check("dequantize", s.dl_dequantize(out, x, type, n, ctx));
    },
    f32ToF16(out, x, n) {
      need("f32ToF16", "out", out.byteLength, 2 * n);
      need("f32ToF16", "x", x.byteLength, 4 * n);
      check("f32_to_f16", s.dl_f32_to_f16(out, x, n, ctx));
    },
    f16ToF32(out, x, n) {
      need("f16ToF32", "out", out.byteLength, 4 * n);
      need("f16ToF32", "x", x.byteLength, 2 * n);
      check("f16_to_f32", s.dl_f16_to_f32(out, x, n, ctx));
    },
    f32ToBf16(out, x, n) {
      need("f32ToBf16", "out", out.byteLength, 2 * n);
      need("f32ToBf16", "x", x.byteLength, 4 * n);
      check("f32_to_bf16", s.dl_f32_to_bf16(out, x, n, ctx));
    },
    releaseFilePages(view) {
      return view.byteLength === 0 || s.dl_release_pages(view, view.byteLength) === 0;
    },
    copyRows(dst, src, rows, rowBytes, srcStride) {
      if (!(srcStride >= rowBytes)) throw new Error(`native copy_rows: the source stride ${srcStride} is below the row's ${rowBytes} bytes`);
      if (rows === 0 || rowBytes === 0) return;
      need("copyRows", "dst", dst.byteLength, rows * rowBytes);
      need("copyRows", "src", src.byteLength, (rows - 1) * srcStride + rowBytes);
      check("copy_rows", s.dl_copy_rows(dst, src, rows, rowBytes, srcStride, ctx));
    },
    warm(view) {
      const n = view.byteLength - (view.byteLength % 256); // the probe reads whole 256-byte steps
      if (n > 0) check("probe_read", s.dl_probe_read(probeOut, view.subarray(0, n), n, 1, ctx));
      return true;
    },
    probeRead(buf, iters) {
      check("probe_read", s.dl_probe_read(probeOut, buf, buf.byteLength, iters, ctx));
      return { seconds: probeOut[0]!, checksum: probeOut[1]! };
    },
    close() {
      s.dl_ctx_destroy(ctx);
    },
  };
}

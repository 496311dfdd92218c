// Picks the kernels: the native library when it loads, else the pure-TypeScript kernels with one
// visible notice. Everything outside src/native uses this module, never ffi.ts directly.
import { createTsKernels } from "./ts-kernels";
import type { Kernels } from "./types";

export * from "./types";

let noticeShown = false;

export interface KernelOptions {
  /** native threads (default: all cores) */
  threads?: number;
  /** force the TypeScript kernels */
  typescript?: boolean;
}

export async function loadKernels(opts: KernelOptions = {}): Promise<Kernels> {
  const threads = opts.threads ?? navigator.hardwareConcurrency;
  if (!opts.typescript) {
    try {
      const ffi = await import("./ffi");
      return ffi.createNativeKernels(threads);
    } catch (e) {
      if (!noticeShown) {
        noticeShown = true;
        process.stderr.write(`dairllm: native kernels unavailable, using the (much slower) TypeScript kernels.\n  reason: ${(e as Error).message.replaceAll("\n", "\n  ")}\n`);
      }
    }
  }
  return createTsKernels();
}

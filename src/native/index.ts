// Picks the kernels: the native library when it loads, else the pure-TypeScript kernels with one
// visible notice. Everything outside src/native uses this module, never ffi.ts directly.
import { existsSync } from "node:fs";
import { join } from "node:path";
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

/** In a source checkout, builds libdairllm when it is missing or stale (as the test preload does). */
async function buildInDevTree(): Promise<void> {
  if (process.env.DAIRLLM_LIB) return;
  const script = join(import.meta.dir, "..", "..", "scripts", "build-native.ts");
  if (!existsSync(script)) return; // a compiled binary: the library is embedded
  try {
    const mod = (await import(script)) as { ensureNative: () => string };
    mod.ensureNative();
  } catch (e) {
    process.stderr.write(`dairllm: building the native library failed: ${(e as Error).message}\n`);
  }
}

export async function loadKernels(opts: KernelOptions = {}): Promise<Kernels> {
  const threads = opts.threads ?? navigator.hardwareConcurrency;
  if (!opts.typescript) {
    try {
      await buildInDevTree();
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

// Builds libdairllm into build/native/<arch>-linux/lib/libdairllm.so, only when a source is newer than
// the library. zig is the toolchain: the one on PATH if it is the pinned version, else the pinned
// `ziglang` wheel from PyPI installed into .tools/zig (no root needed). Without zig, the host's C
// compiler builds a native-only library and says what is missing.
//
//   bun scripts/build-native.ts [--target x86_64|aarch64|all] [--force]
//   bun scripts/build-native.ts --zig build test        (any zig command, with the pinned zig)
// DAIRLLM_ZIG=none skips zig (the C-compiler build); DAIRLLM_BUILD_DIR replaces build/native.
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const TOOLS = join(ROOT, ".tools", "zig");
const ZIG_VERSION = readFileSync(join(ROOT, "build.zig.zon"), "utf8").match(/minimum_zig_version = "([^"]+)"/)![1]!;

export type Arch = "x86_64" | "aarch64";

// Keep in step with the variant tables of build.zig (used only by the C-compiler fallback).
const VARIANTS: Record<Arch, [string, string[]][]> = {
  x86_64: [
    ["scalar", ["-DDL_SCALAR", "<novec>"]],
    ["x86_64", []],
    ["ssse3", ["-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt"]],
    ["avx2", ["-mavx2", "-mfma", "-mf16c"]],
    ["avx512", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]],
  ],
  aarch64: [
    ["scalar", ["-DDL_SCALAR", "<novec>"]],
    ["neon", []],
    ["dotprod", ["-march=armv8.2-a+dotprod"]],
  ],
};
const COMMON = ["-std=c11", "-O2", "-Wall", "-ffp-contract=off", "-fno-math-errno", "-fPIC"];

export function hostArch(): Arch {
  if (process.arch === "x64") return "x86_64";
  if (process.arch === "arm64") return "aarch64";
  throw new Error(`no native build for ${process.arch}: dairllm supports x86-64 and arm64 Linux`);
}

/** build/native, or DAIRLLM_BUILD_DIR (the tests build the fallback library elsewhere). */
function buildDir(arch: Arch): string {
  return join(process.env.DAIRLLM_BUILD_DIR ?? join(ROOT, "build", "native"), `${arch}-linux`);
}

export function libraryPath(arch: Arch): string {
  return join(buildDir(arch), "lib", "libdairllm.so");
}

function log(msg: string): void {
  process.stderr.write(`[build-native] ${msg}\n`);
}

function run(cmd: string[], env?: Record<string, string>): { ok: boolean; out: string } {
  const p = Bun.spawnSync(cmd, { cwd: ROOT, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { ok: p.exitCode === 0, out: `${p.stdout.toString()}${p.stderr.toString()}` };
}

function newestSource(): number {
  const files = [join(ROOT, "build.zig"), join(ROOT, "build.zig.zon")];
  for (const f of readdirSync(join(ROOT, "cpp"))) files.push(join(ROOT, "cpp", f));
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

/** The command that runs the pinned zig, installing it into .tools/zig when needed; null if impossible. */
export function findZig(): { cmd: string[]; env: Record<string, string> } | null {
  if (process.env.DAIRLLM_ZIG === "none") {
    log("DAIRLLM_ZIG=none: not using zig");
    return null;
  }
  const onPath = Bun.which("zig");
  if (onPath && run([onPath, "version"]).out.trim() === ZIG_VERSION) return { cmd: [onPath], env: {} };
  const python = Bun.which("python3") ?? Bun.which("python");
  if (!python) {
    log(`zig ${ZIG_VERSION} is not on PATH and there is no python3 to install it from PyPI (ziglang==${ZIG_VERSION})`);
    return null;
  }
  const env = { PYTHONPATH: TOOLS };
  const probe = run([python, "-m", "ziglang", "version"], env);
  if (probe.ok && probe.out.trim() === ZIG_VERSION) return { cmd: [python, "-m", "ziglang"], env };
  log(`installing zig ${ZIG_VERSION} from PyPI (ziglang) into .tools/zig ...`);
  const pip = run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location", "--upgrade", "--target", TOOLS, `ziglang==${ZIG_VERSION}`]);
  if (!pip.ok) {
    log(`could not install ziglang==${ZIG_VERSION} with pip:\n${pip.out.trim()}`);
    return null;
  }
  return { cmd: [python, "-m", "ziglang"], env };
}

function buildWithZig(zig: { cmd: string[]; env: Record<string, string> }, arch: Arch): void {
  const prefix = buildDir(arch);
  log(`zig build -Dtarget=${arch}-linux-gnu (ReleaseFast) ...`);
  const t0 = performance.now();
  const r = run([...zig.cmd, "build", `-Dtarget=${arch}-linux-gnu`, "-Drelease", "-p", prefix], zig.env);
  if (!r.ok) throw new Error(`zig build for ${arch} failed:\n${r.out}`);
  log(`built ${libraryPath(arch)} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

function buildWithCc(arch: Arch): void {
  const cc = Bun.which("cc") ?? Bun.which("gcc") ?? Bun.which("clang");
  if (!cc) throw new Error("no zig and no C compiler (cc, gcc or clang): cannot build libdairllm");
  const isClang = run([cc, "--version"]).out.includes("clang");
  const objDir = join(buildDir(arch), "obj");
  mkdirSync(objDir, { recursive: true });
  mkdirSync(join(buildDir(arch), "lib"), { recursive: true });
  const objects: string[] = [];
  for (const [name, flags] of VARIANTS[arch]) {
    const f = flags.flatMap((x) => (x === "<novec>" ? (isClang ? ["-fno-vectorize", "-fno-slp-vectorize"] : ["-fno-tree-vectorize"]) : [x]));
    const obj = join(objDir, `kernels_${name}.o`);
    const r = run([cc, ...COMMON, ...f, `-DDL_VARIANT=${name}`, "-Icpp", "-c", "cpp/kernels.c", "-o", obj]);
    if (!r.ok) throw new Error(`${cc} failed on variant ${name}:\n${r.out}`);
    objects.push(obj);
  }
  const lib = libraryPath(arch);
  const r = run([cc, ...COMMON, "-Icpp", "-shared", "cpp/dispatch.c", ...objects, "-o", lib, "-lm", "-lpthread"]);
  if (!r.ok) throw new Error(`${cc} failed linking libdairllm:\n${r.out}`);
  log(`built ${lib} with ${cc} (native only)`);
}

/** Builds the library for `arch` when it is missing or older than its sources. */
export function ensureNative(arch: Arch = hostArch(), force = false): string {
  const lib = libraryPath(arch);
  if (!force && existsSync(lib) && statSync(lib).mtimeMs >= newestSource()) return lib;
  const zig = findZig();
  if (zig) {
    buildWithZig(zig, arch);
  } else if (arch === hostArch()) {
    log(`zig ${ZIG_VERSION} is missing (install it from PyPI: pip install ziglang==${ZIG_VERSION}, or put zig ${ZIG_VERSION} on PATH);`);
    log("falling back to the system C compiler: native build only, no cross-compilation");
    buildWithCc(arch);
  } else {
    throw new Error(`cross-compiling for ${arch} needs zig ${ZIG_VERSION}, which could not be found or installed`);
  }
  return lib;
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  // `--zig ARGS...` runs the pinned zig (installed on demand) with ARGS, e.g. `--zig build test`.
  const zi = args.indexOf("--zig");
  if (zi >= 0) {
    const zig = findZig();
    if (!zig) process.exit(1);
    const p = Bun.spawnSync([...zig.cmd, ...args.slice(zi + 1)], { cwd: ROOT, env: { ...process.env, ...zig.env }, stdout: "inherit", stderr: "inherit" });
    process.exit(p.exitCode ?? 1);
  }
  const force = args.includes("--force");
  const ti = args.indexOf("--target");
  const t = ti >= 0 ? args[ti + 1] : hostArch();
  const valid = ["x86_64", "aarch64", "all"];
  if (!t || !valid.includes(t)) {
    process.stderr.write(`--target must be one of ${valid.join(", ")} (got ${t ?? "nothing"})\n`);
    process.exit(2);
  }
  const archs: Arch[] = t === "all" ? ["x86_64", "aarch64"] : [t as Arch];
  for (const a of archs) console.log(ensureNative(a, force));
}

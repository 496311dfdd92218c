// Layer streaming (--max-memory): the same logits bit for bit and the same tokens as the mapped path,
// on one node and on a root + worker; a budget below one layer slice refused at start with the
// minimum; and a memory-bound run: a model 4x the budget keeps its peak resident memory within the
// budget, the KV cache and activations (plus the runtime's fixed part, measured on the mapped run).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { evaluateLogits, openEngine } from "../src/engine";
import { parseSize } from "../src/model/streamed";
import { GGMLType } from "../src/native/types";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const MODELS = join(import.meta.dir, "fixtures", "models");
const dir = mkdtempSync(join(tmpdir(), "dairllm-stream-"));
const running: Subprocess[] = [];
afterAll(() => {
  running.forEach((p) => p.kill("SIGKILL"));
  rmSync(dir, { recursive: true, force: true });
});

const TOKENS = [1, 17, 300, 42, 5, 99, 250, 7, 3, 128, 64, 11];

async function logits(model: string, maxMemory?: number, workers?: string[], split?: number[] | "auto"): Promise<Float32Array> {
  const e = await openEngine(model, { threads: 1, maxMemory, workers, wire: GGMLType.F32, ctx: TOKENS.length + 16, split });
  try {
    // the prompt as one batch, then four single tokens: the ring is reused across forward passes
    const cache = e.model.newCache(e.ctx);
    const out: number[] = [];
    out.push(...(await e.model.forward(TOKENS, 0, cache, true)));
    for (let i = 0; i < 4; i++) out.push(...(await e.model.forward([TOKENS[i]!], TOKENS.length + i, cache)));
    return Float32Array.from(out);
  } finally {
    e.close();
  }
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer);

describe("layer streaming", () => {
  for (const name of ["tiny-q4_0", "mini-q8_0", "tiny-f16", "qwen2-tiny-f32", "odd-q4_0"]) {
    test(`${name}: streamed logits equal the mapped ones bit for bit (tight and roomy budgets)`, async () => {
      const model = join(MODELS, `${name}.gguf`);
      const mapped = await logits(model);
      for (const budget of [64 * 1024, 1 << 20]) {
        let streamed: Float32Array;
        try {
          streamed = await logits(model, budget);
        } catch (e) {
          // a budget below this model's minimum must say so; then the roomy one must run
          expect((e as Error).message).toContain("--max-memory");
          expect(budget).toBe(64 * 1024);
          continue;
        }
        expect(bits(streamed)).toEqual(bits(mapped));
      }
    });
  }

  test("a budget below the largest layer slice is refused at open, naming the minimum and the KV cache", async () => {
    const err = await openEngine(join(MODELS, "mini-q8_0.gguf"), { threads: 1, maxMemory: 4096 }).then(
      () => "",
      (e: Error) => e.message,
    );
    expect(err).toMatch(/--max-memory 0\.0 MiB is below the [\d.]+ MiB of weights this node needs at least: its largest layer slice \(layer \d+ (attention|feed-forward)\) must fit; the KV cache \([\d.]+ MiB\) and activations/);
  });

  test("sizes: 512M, 2G, 1.5G, bytes; nonsense refused", () => {
    expect(parseSize("512M")).toBe(512 * 2 ** 20);
    expect(parseSize("2G")).toBe(2 * 2 ** 30);
    expect(parseSize("1.5g")).toBe(1.5 * 2 ** 30);
    expect(parseSize("300000")).toBe(300000);
    expect(parseSize("64KiB")).toBe(65536);
    for (const bad of ["", "abc", "-5M", "0", "5X"]) expect(() => parseSize(bad)).toThrow("--max-memory");
  });

  test("CLI: a bad size is a usage error, a too-small budget an error naming the minimum", () => {
    const run = (...a: string[]) => Bun.spawnSync([process.execPath, MAIN, ...a], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    const bad = run("--root", "-m", join(MODELS, "mini-q8_0.gguf"), "-p", "hi", "--max-memory", "lots");
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr.toString()).toContain('--max-memory: "lots" is not a size');
    const small = run("--root", "-m", join(MODELS, "mini-q8_0.gguf"), "-p", "hi", "--max-memory", "8K");
    expect(small.exitCode).toBe(1);
    expect(small.stderr.toString()).toContain("of weights this node needs at least");
    const worker = run("--port", "0", "-m", join(MODELS, "mini-q8_0.gguf"), "--max-memory", "8K");
    expect(worker.exitCode).toBe(1);
    expect(worker.stderr.toString()).toMatch(/--max-memory 0\.0 MiB is below the [\d.]+ MiB of weights a layer slice .* needs even as one of \d+ nodes/);
  });

  test("root + worker, both streaming: the logits of one mapped node, bit for bit (f32 wire)", async () => {
    const model = join(MODELS, "mini-q4_0.gguf");
    const proc = Bun.spawn([process.execPath, MAIN, "--port", "0", "--host", "127.0.0.1", "-m", model, "-t", "1", "--max-memory", "1M"], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
    running.push(proc);
    const reader = proc.stderr.getReader();
    let text = "";
    while (!/listening on ([\d.]+:\d+)/.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`worker exited: ${text}`);
      text += new TextDecoder().decode(value);
    }
    expect(text).toContain("streaming weights through --max-memory 1.0 MiB");
    const addr = /listening on ([\d.]+:\d+)/.exec(text)![1]!;
    const mapped = await logits(model);
    const streamed = await logits(model, 1 << 20, [addr]);
    expect(bits(streamed)).toEqual(bits(mapped));
    // weighted shares: with --split auto the root's slice (and so its stream) is known only after
    // every node has measured its speed
    for (const split of ["auto", [3, 1]] as const) {
      const weighted = await logits(model, 1 << 20, [addr], split === "auto" ? split : [...split]);
      let diff = 0;
      for (let i = 0; i < mapped.length; i++) diff = Math.max(diff, Math.abs(weighted[i]! - mapped[i]!));
      expect(diff).toBeLessThan(1e-4);
    }
    proc.kill();
  }, 30_000);

  test("memory bound: a model 4x the budget peaks within budget + KV cache + activations (+10 %) above the runtime's fixed part", () => {
    // 32 layers of dim 1024 / ffn 2816, Q8_0: ~400 MB of weights; the budget 92 MiB
    const model = join(dir, "stream-q8_0.gguf");
    const made = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "make-model.ts"), "--out", model, "--preset", "mini", "--dim", "1024", "--ffn", "2816", "--layers", "32", "--heads", "16", "--kv-heads", "4", "--vocab", "4096", "--type", "q8_0", "--quiet"], { cwd: ROOT, stderr: "pipe" });
    expect(made.exitCode).toBe(0);
    const size = statSync(model).size;
    const budget = 92 * 2 ** 20;
    expect(size).toBeGreaterThan(4 * budget);
    const run = (...extra: string[]) => {
      const p = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "stream-run.ts"), model, "6", "--threads", "1", ...extra], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
      expect(p.exitCode).toBe(0);
      return JSON.parse(p.stdout.toString().trim().split("\n").pop()!) as { vmHWM: number; baselineRss: number; kvCache: number; activations: number; generated: number[]; stream: { peakInUse: number } | null };
    };
    const mapped = run();
    const streamed = run("--max-memory", String(budget));
    expect(streamed.generated).toEqual(mapped.generated);
    expect(streamed.stream!.peakInUse).toBeLessThanOrEqual(budget);
    // what the runtime holds besides weights, KV cache and activations (tokenizer, metadata, code),
    // measured on the mapped run, where every weight page is resident
    const fixed = Math.max(0, mapped.vmHWM - mapped.baselineRss - size - mapped.kvCache - mapped.activations);
    const used = streamed.vmHWM - streamed.baselineRss - fixed;
    const allowed = budget + streamed.kvCache + streamed.activations;
    console.log(`memory bound: model ${(size / 2 ** 20).toFixed(1)} MiB, budget ${(budget / 2 ** 20).toFixed(1)} MiB; streamed peak above the runtime ${((streamed.vmHWM - streamed.baselineRss) / 2 ** 20).toFixed(1)} MiB, fixed part ${(fixed / 2 ** 20).toFixed(1)} MiB, so ${(used / 2 ** 20).toFixed(1)} MiB against ${(allowed / 2 ** 20).toFixed(1)} MiB allowed (${(used / allowed).toFixed(3)}); mapped peak ${((mapped.vmHWM - mapped.baselineRss) / 2 ** 20).toFixed(1)} MiB`);
    expect(used).toBeLessThanOrEqual(1.1 * allowed);
    expect(mapped.vmHWM - mapped.baselineRss).toBeGreaterThan(size * 0.9); // the mapped run really held the model
  }, 120_000);
});

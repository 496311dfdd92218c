// The dairllm-worker command line, run as a real process.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GGUFFile } from "../src/model/gguf";
import { Tokenizer } from "../src/model/tokenizer";

const ROOT = join(import.meta.dir, "..");
const MODELS = join(import.meta.dir, "fixtures", "models");
const DEMO = join(import.meta.dir, "fixtures", "demo");
const EXEC = (process.env.DAIRLLM_TEST_EXEC ?? "").split(" ").filter(Boolean);

function cli(...args: string[]) {
  const p = Bun.spawnSync([...EXEC, process.execPath, join(ROOT, "src", "main.ts"), ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("usage", () => {
  test("--help documents every option and exits 0", () => {
    const r = cli("--help");
    expect(r.code).toBe(0);
    for (const flag of ["--root", "--model", "--prompt", "--n-predict", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--seed", "--threads", "--ctx", "--kv"]) expect(r.out).toContain(flag);
    for (const cmd of ["inspect", "tokenize", "logits", "perplexity"]) expect(r.out).toContain(`dairllm-worker ${cmd}`);
  });

  test("--help names every environment variable the program reads", () => {
    const r = cli("--help");
    const read = new Set<string>();
    for (const file of new Bun.Glob("src/**/*.ts").scanSync({ cwd: ROOT })) {
      for (const m of readFileSync(join(ROOT, file), "utf8").matchAll(/process\.env\.(DAIRLLM_[A-Z_]+)|process\.env\[["'](DAIRLLM_[A-Z_]+)["']\]/g)) read.add(m[1] ?? m[2]!);
    }
    expect([...read].sort()).toEqual(["DAIRLLM_LIB", "DAIRLLM_SECRET", "DAIRLLM_SPIN_MS", "DAIRLLM_VARIANT", "DAIRLLM_WARM"]);
    for (const name of read) expect(r.out).toContain(name);
  });

  test("bad flags and values are named, with exit code 2", () => {
    const cases: [string[], RegExp][] = [
      [["--root", "--tmep", "0.5"], /unknown option --tmep \(did you mean --temp\?\)/],
      [["--root", "-m", "x.gguf", "-p", "hi", "-n", "abc"], /--n-predict: "abc" is not a number/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--threads", "0"], /--threads: 0 is below the minimum 1/],
      [["--root", "-m", "x.gguf"], /--prompt is required/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--kv", "q8"], /--kv must be f32 or f16/],
      [["-m", "x.gguf"], /nothing to do/],
      [["frobnicate"], /unknown command "frobnicate"/],
      [["logits", "--model", "x.gguf", "--tokens", "1,a", "--out", "/tmp/x"], /--tokens: "a" is not a token id/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--workers", "a:1", "--split", "1,0"], /--split must be even, auto or whole numbers from 1 to 1000000, one per node, the root first \(got 1,0\)/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--workers", "a:1", "--split", "fast"], /--split must be even, auto or whole numbers/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--workers", "a:1,b:2", "--mesh", "maybe"], /--mesh must be on or off \(got maybe\)/],
      [["--root", "-m", "x.gguf", "-p", "hi", "--split", "2,1"], /--split has 2 weights for 1 node\(s\) \(the root and 0 worker\(s\)\)/],
      [["speed", "--type", "q5_1"], /--type must be one of f32, f16, bf16, q8_0, q4_0 \(got q5_1\)/],
      [["speed", "--type", "q4_0", "--model", "x.gguf"], /speed: give --model or --type, not both/],
    ];
    for (const [args, msg] of cases) {
      const r = cli(...args);
      expect(r.err).toMatch(msg);
      expect(r.code).toBe(2);
    }
  });

  test("speed prints this machine's matrix x vector MB/s for a type or a model's feed-forward type", () => {
    const r = cli("speed", "--type", "q8_0", "-t", "1");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Q8_0 matrix x vector: [1-9]\d* MB\/s with 1 thread\(s\) \(native:\w+\)\n$/);
    const m = cli("speed", "--model", join(MODELS, "tiny-q4_0.gguf"), "-t", "1");
    expect(m.code).toBe(0);
    expect(m.out).toMatch(/^Q4_0 matrix x vector: [1-9]\d* MB\/s/);
  });

  test("--root without --model runs the demo model, saying so", () => {
    const r = cli("--root", "-n", "4", "--temp", "0");
    expect(r.code).toBe(0);
    expect(r.err).toContain("no --model: running the built-in demo model");
  });

  test("a missing or broken model file is an error naming the file (exit 1)", () => {
    const r = cli("--root", "-m", "/nonexistent.gguf", "-p", "hi");
    expect(r.code).toBe(1);
    expect(r.err).toContain("/nonexistent.gguf: no such file");
    const r2 = cli("inspect", join(MODELS, "tiny-q4_0.ref.json"));
    expect(r2.code).toBe(1);
    expect(r2.err).toContain("not a GGUF file");
  });
});

describe("generation", () => {
  test("--root --temp 0 streams llama.cpp's greedy continuation, with speeds on stderr", async () => {
    const ref = await Bun.file(join(MODELS, "mini-q4_0.ref.json")).json();
    const tok = Tokenizer.fromGGUF(GGUFFile.open(join(MODELS, "mini-q4_0.gguf")));
    const r = cli("--root", "-m", join(MODELS, "mini-q4_0.gguf"), "-p", ref.greedy.prompt_text, "-n", "32", "--temp", "0", "-t", "2");
    expect(r.code).toBe(0);
    // a continuation keeps its leading space (as llama.cpp's streamed output)
    const d = tok.createDecoder();
    const text = (ref.greedy.generated as number[]).map((id) => d.push(id)).join("") + d.flush();
    expect(r.out).toBe(`${text}\n`);
    expect(r.err).toMatch(/loaded .* in [\d.]+ s/);
    expect(r.err).toMatch(/prompt: \d+ tokens in [\d.]+ s \([\d.]+ tokens\/s\); decode: 32 tokens in [\d.]+ s \([\d.]+ tokens\/s\)/);
  });

  test("the demo model completes Python code exactly as llama.cpp does (Q4_0, greedy)", async () => {
    const greedy = await Bun.file(join(DEMO, "greedy.json")).json();
    for (const [prompt, v] of Object.entries(greedy.prompts) as [string, { by_type: { q4_0: { gen_text: string; gen_ids: number[] } } }][]) {
      const r = cli("--root", "-m", join(DEMO, "dairllm-demo-13m-q4_0.gguf"), "-p", prompt, "-n", String(v.by_type.q4_0.gen_ids.length), "--temp", "0", "--kv", "f16");
      expect(r.code).toBe(0);
      expect(r.out).toBe(`${v.by_type.q4_0.gen_text}\n`);
    }
  }, 60_000);

  test("same seed, same text; sampling differs from greedy", () => {
    const args = ["--root", "-m", join(DEMO, "dairllm-demo-13m-q4_0.gguf"), "-p", "import os\n", "-n", "24", "--temp", "0.9", "--seed", "7"];
    const a = cli(...args), b = cli(...args);
    expect(a.code).toBe(0);
    expect(a.out).toBe(b.out);
    expect(a.err).toContain("seed 7");
  });

  test("the context limit stops generation with a clear message", () => {
    const r = cli("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "A long time ago", "-n", "500", "--temp", "0", "--ctx", "20");
    expect(r.code).toBe(0);
    expect(r.err).toContain("the context limit of 20 tokens is reached");
    const r2 = cli("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "A long time ago, in a land far away", "--ctx", "8");
    expect(r2.code).toBe(1);
    expect(r2.err).toMatch(/the prompt has \d+ tokens, which leaves no room in a context of 8/);
  });
});

describe("tools", () => {
  test("inspect prints architecture, dims, tensor types and sizes", () => {
    const r = cli("inspect", join(MODELS, "odd-q4_0.gguf"));
    expect(r.code).toBe(0);
    expect(r.out).toContain("architecture:  llama");
    expect(r.out).toContain("dim 192, ffn 544, layers 3, heads 6, kv heads 3, head dim 32, vocab 1000");
    expect(r.out).toMatch(/tensor types: +Q4_0 x22 \(0\.79 MiB\), F32 x7 \(0\.01 MiB\)/);
    expect(r.out).toContain("rms eps 0.00001");
    expect(r.out).toMatch(/blk\.0\.attn_q\.weight +Q4_0 +\[192, 192\] +20736 bytes/);
  });

  test("tokenize prints llama.cpp's ids as one JSON array (--no-bos, --file)", async () => {
    const ref = await Bun.file(join(MODELS, "tiny-f32.ref.json")).json();
    for (const { text, ids } of ref.tokenize as { text: string; ids: number[] }[]) {
      const r = cli("tokenize", "--model", join(MODELS, "tiny-f32.gguf"), text);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.out)).toEqual(ids);
      expect(JSON.parse(cli("tokenize", "--model", join(MODELS, "tiny-f32.gguf"), "--no-bos", text).out)).toEqual(ids.slice(1));
    }
    const dir = mkdtempSync(join(tmpdir(), "dairllm-cli-"));
    try {
      writeFileSync(join(dir, "t.txt"), ref.tokenize[0].text);
      expect(JSON.parse(cli("tokenize", "-m", join(MODELS, "tiny-f32.gguf"), "--file", join(dir, "t.txt")).out)).toEqual(ref.tokenize[0].ids);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test("logits writes [n_tokens x n_vocab] float32 matching llama.cpp", async () => {
    const ref = await Bun.file(join(MODELS, "qwen2-tiny-f32.ref.json")).json();
    const want = new Float32Array(readFileSync(join(MODELS, "qwen2-tiny-f32.logits.f32")).buffer.slice(0));
    const dir = mkdtempSync(join(tmpdir(), "dairllm-cli-"));
    try {
      const out = join(dir, "l.f32");
      const r = cli("logits", "--model", join(MODELS, "qwen2-tiny-f32.gguf"), "--tokens", ref.tokens.join(","), "--out", out);
      expect(r.code).toBe(0);
      const got = new Float32Array(readFileSync(out).buffer.slice(0));
      expect(got.length).toBe(want.length);
      let max = 0;
      for (let i = 0; i < got.length; i++) max = Math.max(max, Math.abs(got[i]! - want[i]!));
      expect(max).toBeLessThan(1e-5);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test("perplexity prints PPL = <value> +/- <err>; the demo model finds Python easier than prose", () => {
    const dir = mkdtempSync(join(tmpdir(), "dairllm-cli-"));
    try {
      const py = join(dir, "code.py");
      const prose = join(dir, "prose.txt");
      writeFileSync(py, readFileSync(join(DEMO, "sample.py"), "utf8"));
      writeFileSync(prose, readFileSync(join(DEMO, "README.md"), "utf8").slice(0, 6000));
      const run = (f: string) => cli("perplexity", "--model", join(DEMO, "dairllm-demo-13m-q4_0.gguf"), "--file", f, "--ctx", "128");
      const a = run(py), b = run(prose);
      expect(a.code).toBe(0);
      const m = /^PPL = ([\d.]+) \+\/- ([\d.]+)$/m.exec(a.out);
      const n = /^PPL = ([\d.]+) \+\/- ([\d.]+)$/m.exec(b.out);
      expect(m).not.toBeNull();
      expect(n).not.toBeNull();
      expect(Number(m![2])).toBeGreaterThan(0);
      expect(Number(m![1])).toBeLessThan(Number(n![1]));
      expect(a.err).toMatch(/chunks of 128 tokens, \d+ tokens scored/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  }, 60_000);
});

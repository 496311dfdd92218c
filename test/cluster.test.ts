// A root and workers as real processes on 127.0.0.1: the same text as one node, and a clear error
// (never a hang) for a wrong file, a wrong secret, a wrong protocol version, garbage, a dead or
// stalled worker, an unreachable one.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { openEngine } from "../src/engine";
import { MessageType, PROTOCOL_VERSION } from "../src/cluster/protocol";
import { connect } from "../src/cluster/conn";

const ROOT = join(import.meta.dir, "..");
const MODELS = join(import.meta.dir, "fixtures", "models");
const DEMO = join(import.meta.dir, "fixtures", "demo", "dairllm-demo-13m-q4_0.gguf");
const MAIN = join(ROOT, "src", "main.ts");
const EXEC = (process.env.DAIRLLM_TEST_EXEC ?? "").split(" ").filter(Boolean);
const running: Subprocess[] = [];
afterAll(() => running.forEach((p) => p.kill("SIGKILL")));

interface Worker {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  addr: string;
  log: () => string;
}

/** Starts a worker on a free port and waits until it listens. */
function worker(model: string, ...extra: string[]): Promise<Worker> {
  return workerWith(process.env, model, ...extra);
}

async function workerWith(env: Record<string, string | undefined>, model: string, ...extra: string[]): Promise<Worker> {
  const proc = Bun.spawn([...EXEC, process.execPath, MAIN, "--port", "0", "--host", "127.0.0.1", "--model", model, "--threads", "1", ...extra], { cwd: ROOT, stdout: "pipe", stderr: "pipe", env });
  running.push(proc);
  let text = "";
  const reader = proc.stderr.getReader();
  const decoder = new TextDecoder();
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
  })();
  const t0 = Date.now();
  while (!/listening on ([\d.]+:\d+)/.test(text)) {
    if (Date.now() - t0 > 10_000) throw new Error(`worker did not start: ${text}`);
    await Bun.sleep(20);
  }
  return { proc, addr: /listening on ([\d.]+:\d+)/.exec(text)![1]!, log: () => text };
}

function root(...args: string[]) {
  return rootWith(process.env, ...args);
}

function rootWith(env: Record<string, string | undefined>, ...args: string[]) {
  const t0 = performance.now();
  const p = Bun.spawnSync([...EXEC, process.execPath, MAIN, ...args], { cwd: ROOT, stdout: "pipe", stderr: "pipe", env });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString(), seconds: (performance.now() - t0) / 1000 };
}

async function workers(model: string, n: number, ...extra: string[]): Promise<Worker[]> {
  return Promise.all(Array.from({ length: n }, () => worker(model, ...extra)));
}

function stop(ws: Worker[]) {
  for (const w of ws) w.proc.kill("SIGTERM");
}

async function logitsOf(model: string, tokens: number[], ...extra: string[]): Promise<Float32Array> {
  const dir = mkdtempSync(join(tmpdir(), "dairllm-cluster-"));
  try {
    const out = join(dir, "l.f32");
    const r = root("logits", "--model", model, "--tokens", tokens.join(","), "--out", out, ...extra);
    if (r.code !== 0) throw new Error(r.err);
    return new Float32Array(readFileSync(out).buffer.slice(0));
  } finally {
    rmSync(dir, { recursive: true });
  }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe("same results as one node", () => {
  for (const [name, nodes] of [["tiny-q4_0", 2], ["odd-q4_0", 3], ["mini-f32", 2], ["mini-q4_0", 4], ["qwen2-tiny-q8_0", 2]] as const) {
    test(`${name} on ${nodes} nodes: logits (f32 wire) within 1e-4, greedy text identical (f32 and q8_0 wire)`, async () => {
      const model = join(MODELS, `${name}.gguf`);
      const ref = await Bun.file(join(MODELS, `${name}.ref.json`)).json();
      const ws = await workers(model, nodes - 1);
      try {
        const list = ws.map((w) => w.addr).join(",");
        const single = await logitsOf(model, ref.tokens);
        const f32 = await logitsOf(model, ref.tokens, "--workers", list, "--wire", "f32");
        const q8 = await logitsOf(model, ref.tokens, "--workers", list);
        console.log(`${name}, ${nodes} nodes: max logit difference ${maxDiff(f32, single).toExponential(2)} (f32 wire), ${maxDiff(q8, single).toExponential(2)} (q8_0 wire)`);
        expect(maxDiff(f32, single)).toBeLessThan(1e-4);
        const args = ["--root", "-m", model, "-p", ref.greedy.prompt_text, "-n", "32", "--temp", "0"];
        const one = root(...args);
        expect(one.code).toBe(0);
        for (const wire of ["f32", "q8_0"]) {
          const many = root(...args, "--workers", list, "--wire", wire);
          expect(many.err).toContain(`${nodes - 1} worker(s)`);
          expect(many.code).toBe(0);
          expect(many.out).toBe(one.out);
          // three nodes or more: the workers link to each other (each reduction crosses the network once)
          expect(many.err.includes("linked to each other")).toBe(nodes > 2);
        }
        if (nodes > 2) {
          // and every reduction through the root (--mesh off): the same text
          const star = root(...args, "--workers", list, "--mesh", "off");
          expect(star.code).toBe(0);
          expect(star.err).not.toContain("linked to each other");
          expect(star.out).toBe(one.out);
          const f32star = await logitsOf(model, ref.tokens, "--workers", list, "--wire", "f32", "--mesh", "off");
          expect(maxDiff(f32star, single)).toBeLessThan(1e-4);
          for (const w of ws) {
            for (let i = 0; i < 100 && !w.log().includes("linked to the other workers"); i++) await Bun.sleep(20);
            expect(w.log()).toContain("linked to the other workers");
          }
        }
        // every worker computed its share of the logits (SESSION_LOGITS)
        for (const w of ws) {
          for (let i = 0; i < 100 && !/logits \d+\.\.\d+\)/.test(w.log()); i++) await Bun.sleep(20);
          expect(w.log()).toMatch(/logits \d+\.\.\d+\)/);
        }
      } finally {
        stop(ws);
      }
    }, 60_000);
  }

  test("reading the next weights ahead while waiting (DAIRLLM_WARM) changes nothing in the text, on 2 and 3 nodes", async () => {
    const env = { ...process.env, DAIRLLM_WARM: "auto" };
    for (const [name, nodes] of [["tiny-q4_0", 2], ["odd-q4_0", 3]] as const) {
      const model = join(MODELS, `${name}.gguf`);
      const ref = await Bun.file(join(MODELS, `${name}.ref.json`)).json();
      const ws = await Promise.all(Array.from({ length: nodes - 1 }, () => workerWith(env, model)));
      try {
        const args = ["--root", "-m", model, "-p", ref.greedy.prompt_text, "-n", "32", "--temp", "0"];
        const one = root(...args);
        const many = rootWith(env, ...args, "--workers", ws.map((w) => w.addr).join(","));
        expect(many.code).toBe(0);
        expect(many.out).toBe(one.out);
        expect(many.err).not.toContain("DAIRLLM_WARM");
      } finally {
        stop(ws);
      }
    }
    // a value it cannot read is said once, by name, and the run goes on without it
    const bad = rootWith({ ...process.env, DAIRLLM_WARM: "lots" }, "--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "a", "-n", "2", "--temp", "0");
    expect(bad.code).toBe(0);
    expect(bad.err).toContain('DAIRLLM_WARM must be "auto" or a number of MiB (0: off), not "lots"; reading ahead while waiting is off');
  }, 60_000);

  test("nodes of unequal speed: --split 3,1,2 and --split auto give one node's text, the shares follow the weights", async () => {
    const model = join(MODELS, "mini-q4_0.gguf"); // 4 KV heads, 22 feed-forward blocks
    const ref = await Bun.file(join(MODELS, "mini-q4_0.ref.json")).json();
    const ws = await workers(model, 2);
    try {
      const list = ws.map((w) => w.addr).join(",");
      const single = await logitsOf(model, ref.tokens);
      expect(maxDiff(await logitsOf(model, ref.tokens, "--workers", list, "--wire", "f32", "--split", "1,3,2"), single)).toBeLessThan(1e-4);
      const args = ["--root", "-m", model, "-p", ref.greedy.prompt_text, "-n", "32", "--temp", "0"];
      const one = root(...args);
      expect(one.code).toBe(0);
      const weighted = root(...args, "--workers", list, "--wire", "f32", "--split", "3,1,2");
      expect(weighted.code).toBe(0);
      expect(weighted.out).toBe(one.out);
      // 3 : 1 : 2 of 4 KV heads is 2, 1, 1; of 22 blocks of 32 feed-forward rows 11, 4, 7
      const share = /serving .* as node (\d) of 3 \(KV heads (\d+)\.\.(\d+), feed-forward (\d+)\.\.(\d+)/g;
      for (let i = 0; i < 100 && [...ws[1]!.log().matchAll(share)].length < 2; i++) await Bun.sleep(20);
      expect([...ws[0]!.log().matchAll(share)].at(-1)!.slice(1).map(Number)).toEqual([1, 2, 2, 352, 479]);
      expect([...ws[1]!.log().matchAll(share)].at(-1)!.slice(1).map(Number)).toEqual([2, 3, 3, 480, 703]);
      const auto = root(...args, "--workers", list, "--wire", "f32", "--split", "auto");
      expect(auto.code).toBe(0);
      expect(auto.out).toBe(one.out);
      expect(auto.err).toMatch(/split by measured Q4_0 matrix x vector speed: root \d+ MB\/s, worker \S+ \d+ MB\/s, worker \S+ \d+ MB\/s/);
      for (const w of ws) {
        for (let i = 0; i < 100 && !/Q4_0 matrix x vector at \d+ MB\/s/.test(w.log()); i++) await Bun.sleep(20);
        expect(w.log()).toMatch(/Q4_0 matrix x vector at \d+ MB\/s with 1 thread\(s\)/);
      }
    } finally {
      stop(ws);
    }
  }, 60_000);

  test("a worker serves one root after another, keeping its column-slice copies for the same split", async () => {
    const [w] = await workers(join(MODELS, "tiny-f32.gguf"), 1);
    const run = (...extra: string[]) => root("--root", "-m", join(MODELS, "tiny-f32.gguf"), "-p", "A long", "-n", "8", "--temp", "0", "--workers", w!.addr, ...extra);
    const kept = () => w!.log().match(/column slices \([\d.]+ MiB\) kept from the last session, 0 copied/g)?.length ?? 0;
    const sessions = async (n: number) => {
      for (let i = 0; i < 100 && (w!.log().match(/ready for the next root/g)?.length ?? 0) < n; i++) await Bun.sleep(20);
      expect(w!.log().match(/ready for the next root/g)?.length).toBe(n);
    };
    try {
      const first = run();
      expect(first.code).toBe(0);
      for (let i = 0; i < 2; i++) expect(run().out).toBe(first.out);
      await sessions(3);
      expect(kept()).toBe(2); // the 2nd and 3rd session found every copy made
      // another split needs other columns: copied anew, and the text of that split is what one node says
      const other = run("--split", "2,1");
      expect(other.code).toBe(0);
      await sessions(4);
      expect(kept()).toBe(2);
      // and back: the copies of the even split were not kept past the other split's session
      expect(run().out).toBe(first.out);
      await sessions(5);
      expect(kept()).toBe(2);
      expect(other.out).toBe(root("--root", "-m", join(MODELS, "tiny-f32.gguf"), "-p", "A long", "-n", "8", "--temp", "0").out);
    } finally {
      stop([w!]);
    }
  }, 60_000);
});

describe("refusals and failures", () => {
  test("a worker with a different model file: the root names the worker, its path and what differs", async () => {
    const [w] = await workers(join(MODELS, "tiny-q8_0.gguf"), 1);
    try {
      const r = root("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "hi", "--workers", w!.addr);
      expect(r.code).toBe(1);
      expect(r.err).toContain(`worker ${w!.addr}`);
      expect(r.err).toContain("tiny-q8_0.gguf");
      expect(r.err).toMatch(/size 175072 here, 99296 on the root/);
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("a model file replaced or removed while the worker runs is seen at the next handshake", async () => {
    const dir = mkdtempSync(join(tmpdir(), "dairllm-swap-"));
    const path = join(dir, "model.gguf");
    copyFileSync(join(MODELS, "tiny-q4_0.gguf"), path);
    const [w] = await workers(path, 1);
    try {
      const ok = root("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "hi", "-n", "4", "--temp", "0", "--workers", w!.addr);
      expect(ok.code).toBe(0);
      // another model in its place (a new file renamed over it, as a download would)
      copyFileSync(join(MODELS, "tiny-q8_0.gguf"), path + ".new");
      renameSync(path + ".new", path);
      const r = root("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "hi", "-n", "4", "--workers", w!.addr);
      expect(r.code).toBe(1);
      expect(r.err).toContain(`worker ${w!.addr}`);
      expect(r.err).toMatch(/size 175072 here, 99296 on the root/);
      for (let i = 0; i < 100 && !w!.log().includes("changed since it was identified"); i++) await Bun.sleep(20);
      expect(w!.log()).toMatch(/model\.gguf changed since it was identified: now 175072 bytes/);
      // that model's own root is served, from the new file
      const q8 = root("--root", "-m", join(MODELS, "tiny-q8_0.gguf"), "-p", "hi", "-n", "4", "--temp", "0", "--workers", w!.addr);
      expect(q8.code).toBe(0);
      expect(q8.out).toBe(root("--root", "-m", join(MODELS, "tiny-q8_0.gguf"), "-p", "hi", "-n", "4", "--temp", "0").out);
      // gone: refused with its path
      rmSync(path);
      const gone = root("--root", "-m", join(MODELS, "tiny-q8_0.gguf"), "-p", "hi", "--workers", w!.addr);
      expect(gone.code).toBe(1);
      expect(gone.err).toContain(`${path}: no such file`);
    } finally {
      stop([w!]);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  test("a worker whose file is missing refuses with its path", async () => {
    const [w] = await workers("/nonexistent/model.gguf", 1);
    try {
      const r = root("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "hi", "--workers", w!.addr);
      expect(r.code).toBe(1);
      expect(r.err).toContain("/nonexistent/model.gguf: no such file");
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("the cluster secret: a wrong one and a missing one are refused; the right one works", async () => {
    const model = join(MODELS, "tiny-q4_0.gguf");
    const [w] = await workers(model, 1, "--secret", "s3cret");
    try {
      expect(w!.log()).not.toContain("WARNING: no cluster secret");
      const wrong = root("--root", "-m", model, "-p", "hi", "--workers", w!.addr, "--secret", "guess");
      expect(wrong.code).toBe(1);
      expect(wrong.err).toContain("wrong cluster secret");
      const none = root("--root", "-m", model, "-p", "hi", "--workers", w!.addr);
      expect(none.code).toBe(1);
      expect(none.err).toContain("requires a cluster secret");
      expect(root("--root", "-m", model, "-p", "hi", "-n", "4", "--workers", w!.addr, "--secret", "s3cret").code).toBe(0);
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("garbage, a wrong protocol version and an oversized frame close that connection with a logged reason; the worker keeps serving", async () => {
    const model = join(MODELS, "tiny-q4_0.gguf");
    const [w] = await workers(model, 1);
    try {
      expect(w!.log()).toContain("WARNING: no cluster secret");
      const [host, port] = w!.addr.split(":");
      const send = async (bytes: Uint8Array) => {
        let closed = false;
        const s = await Bun.connect({ hostname: host!, port: Number(port), socket: { data() {}, close() { closed = true; } } });
        s.write(bytes);
        for (let i = 0; i < 100 && !closed; i++) await Bun.sleep(20);
        expect(closed).toBe(true);
      };
      const header = (version: number, type: number, length: number) => {
        const b = new Uint8Array(24);
        const v = new DataView(b.buffer);
        b.set([0x44, 0x4c, 0x4c, 0x4d]);
        v.setUint16(4, version, true);
        v.setUint16(6, type, true);
        v.setUint32(16, length, true);
        return b;
      };
      await send(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
      await send(header(1, 1, 0)); // a root of protocol version 1
      await send(header(PROTOCOL_VERSION, 7, 0x7fffffff));
      await Bun.sleep(100);
      expect(w!.log()).toMatch(/bad frame: .*magic/);
      expect(w!.log()).toContain(`peer speaks protocol version 1, this node speaks ${PROTOCOL_VERSION}`);
      expect(w!.log()).toMatch(/above the limit/);
      expect(root("--root", "-m", model, "-p", "hi", "-n", "4", "--workers", w!.addr).code).toBe(0);
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("a step the worker cannot run (a token outside the vocabulary) is answered with an Error naming it; the worker keeps serving", async () => {
    const model = join(MODELS, "tiny-q4_0.gguf");
    const [w] = await workers(model, 1);
    try {
      const e = await openEngine(model, { threads: 1, workers: [w!.addr] });
      try {
        const conn = e.peers!.conns[0]!;
        conn.send({ type: MessageType.Step, pos: 0, logits: 0, tokens: Uint32Array.of(1, 4_000_000) });
        const r = await conn.next(5000, "the answer to a bad step");
        expect(r.message.type).toBe(MessageType.Error);
        if (r.message.type === MessageType.Error) expect(r.message.message).toContain("token id 4000000 is outside the vocabulary");
      } finally {
        e.close();
      }
      for (let i = 0; i < 100 && !w!.log().includes("ready for the next root"); i++) await Bun.sleep(20);
      expect(w!.log()).toContain("token id 4000000 is outside the vocabulary");
      expect(root("--root", "-m", model, "-p", "hi", "-n", "4", "--workers", w!.addr).code).toBe(0);
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("a link from a stranger (a PeerHello with a token no session has) is refused; the worker keeps serving", async () => {
    const model = join(MODELS, "tiny-q4_0.gguf");
    const [w] = await workers(model, 1);
    try {
      const [host, port] = w!.addr.split(":");
      const conn = await connect(host!, Number(port), `worker ${w!.addr}`, 5000);
      conn.send({ type: MessageType.PeerHello, version: PROTOCOL_VERSION, node: 2, token: new Uint8Array(16).fill(7) });
      const r = await conn.next(10_000, "the answer to a stranger's link");
      expect(r.message.type).toBe(MessageType.Error);
      if (r.message.type === MessageType.Error) expect(r.message.message).toContain("no session of this worker has the mesh token");
      expect(root("--root", "-m", model, "-p", "hi", "-n", "4", "--workers", w!.addr).code).toBe(0);
    } finally {
      stop([w!]);
    }
  }, 30_000);

  test("an unreachable worker is a clear error, quickly", () => {
    const r = root("--root", "-m", join(MODELS, "tiny-q4_0.gguf"), "-p", "hi", "--workers", "127.0.0.1:1");
    expect(r.code).toBe(1);
    expect(r.err).toContain("worker 127.0.0.1:1: cannot connect (ECONNREFUSED)");
    expect(r.seconds).toBeLessThan(5);
  });

  for (const nodes of [2, 3]) {
    for (const [how, signal, message] of [["dies", "SIGKILL", "closed the connection"], ["stalls", "SIGSTOP", "did not answer"]] as const) {
      // with 3 nodes the workers are linked: the other worker waits for the lost one's partial too
      test(`a worker that ${how} mid-generation stops the root within 5 s, naming it (${nodes} nodes)`, async () => {
        const ws = await workers(DEMO, nodes - 1);
        const lost = ws[ws.length - 1]!;
        try {
          const proc = Bun.spawn([...EXEC, process.execPath, MAIN, "--root", "-m", DEMO, "-p", "def f(x):", "-n", "480", "--temp", "0", "--workers", ws.map((w) => w.addr).join(",")], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
          running.push(proc);
          const reader = proc.stdout.getReader();
          await reader.read(); // the first tokens are out: generation is under way
          const t0 = performance.now();
          lost.proc.kill(signal);
          const code = await proc.exited;
          const seconds = (performance.now() - t0) / 1000;
          const err = await new Response(proc.stderr).text();
          expect(code).toBe(1);
          expect(err).toContain(`worker ${lost.addr}`);
          expect(err).toContain(message);
          expect(seconds).toBeLessThan(6.5);
          if (nodes > 2) {
            // the other worker drops the session and serves the next root
            const again = root("--root", "-m", DEMO, "-p", "def f(x):", "-n", "4", "--temp", "0", "--workers", ws[0]!.addr);
            expect(again.code).toBe(0);
          }
        } finally {
          for (const w of ws) w.proc.kill("SIGKILL");
        }
      }, 30_000);
    }
  }

  test("workers with the cluster secret link to each other through its challenge; when one lacks it, the root says why and goes through itself", async () => {
    const model = join(MODELS, "odd-q4_0.gguf");
    const args = ["--root", "-m", model, "-p", "hello", "-n", "12", "--temp", "0"];
    const one = root(...args);
    const both = [await worker(model, "--secret", "s3cret"), await worker(model, "--secret", "s3cret")];
    try {
      const r = root(...args, "--secret", "s3cret", "--workers", both.map((w) => w.addr).join(","));
      expect(r.code).toBe(0);
      expect(r.err).toContain("linked to each other");
      expect(r.out).toBe(one.out);
    } finally {
      stop(both);
    }
    const ws = [await worker(model, "--secret", "s3cret"), await worker(model)];
    try {
      const r = root(...args, "--secret", "s3cret", "--workers", ws.map((w) => w.addr).join(","));
      expect(r.code).toBe(0);
      expect(r.err).toContain("the workers cannot all reach each other");
      expect(r.err).toContain("requires a cluster secret and this worker has none");
      expect(r.err).not.toContain("linked to each other");
      expect(r.out).toBe(one.out);
    } finally {
      stop(ws);
    }
  }, 30_000);
});

test("--verify full compares the whole file's MD5 with every worker", async () => {
  const model = join(MODELS, "tiny-q4_0.gguf");
  const [w] = await workers(model, 1);
  try {
    const r = root("--root", "-m", model, "-p", "hi", "-n", "4", "--workers", w!.addr, "--verify", "full");
    expect(r.code).toBe(0);
    for (let i = 0; i < 100 && !w!.log().includes("computing the full MD5"); i++) await Bun.sleep(20);
    expect(w!.log()).toContain("computing the full MD5");
  } finally {
    stop([w!]);
  }
}, 30_000);

test("more nodes than KV heads: the demo model (2 KV heads) on a root and two workers gives llama.cpp's text", async () => {
  const greedy = await Bun.file(join(import.meta.dir, "fixtures", "demo", "greedy.json")).json();
  const ref = greedy.prompts["def fibonacci(n):"].by_type.q4_0;
  const ws = await workers(DEMO, 2);
  try {
    const r = root("--root", "-m", DEMO, "-p", "def fibonacci(n):", "-n", String(ref.gen_ids.length), "--temp", "0", "--kv", "f16", "--workers", ws.map((w) => w.addr).join(","), "--wire", "f32");
    expect(r.code).toBe(0);
    expect(r.out).toBe(`${ref.gen_text}\n`);
  } finally {
    stop(ws);
  }
}, 30_000);

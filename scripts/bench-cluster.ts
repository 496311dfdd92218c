// Cluster benchmark: decode speed of root + 1 worker (1 thread each) against one node with 2 threads,
// on 127.0.0.1 and between two network namespaces joined by a veth pair shaped with tc netem
// (1 Gbit/s, 0.1 ms each way); bytes and reductions per token; worker start-up to ready; the
// worker's resident memory against the model size; root + 2 workers with and without links between
// the workers (--mesh); and, as root with a cpu cgroup, a worker held to half a CPU (a slower
// machine) under --split even, auto and 2,1. Every figure is measured in this run.
//
//   bun scripts/bench-cluster.ts [--model F.gguf] [-n TOKENS] [--runs R] [--no-netns] [--no-slow] [--no-three]
// Without --model, the TinyLlama-shape Q4_0 model is generated once into build/models/.
// Each configuration runs R times (default 3), the configurations interleaved round by round, and
// the best run of each is compared: on a shared VM whose memory bandwidth moves by tens of percent
// from one second to the next, a single run of each says more about the neighbours than about the
// cluster. The spread of the runs is printed beside the best.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tinyllamaModel } from "./models";
import { outputTensorName } from "../src/cluster/plan";
import { GGUFFile } from "../src/model/gguf";
import { readConfig } from "../src/model/config";
import { partition, splitVocab } from "../src/cluster/partition";
import { typeBytes } from "../src/native/types";

const ROOT = join(import.meta.dir, "..");
const MAIN = join(ROOT, "src", "main.ts");
const BUN = process.execPath;
const args = process.argv.slice(2);
const arg = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
// 256 decoded tokens by default (48 until 2026-12-03): in a process's first few hundred tokens the JIT
// still compiles the forward pass (FTL compiles of 20-100 ms each, on a helper thread that takes the
// node's core), and in a pair every such pause on one node is waited out by the other; a worker that
// serves session after session, and a generation of any length, runs past that.
const nTokens = Number(arg("-n") ?? 256);
const runs = Math.max(1, Number(arg("--runs") ?? 3));
const PROMPT = "Once upon a time";

async function modelPath(): Promise<string> {
  const given = arg("--model");
  if (given) return given;
  return tinyllamaModel("q4_0");
}

interface Run {
  tokPerSec: number;
  wire?: string;
  err: string;
}

function parseRun(err: string): Run {
  const m = /decode: (\d+) tokens in ([\d.]+) s/.exec(err);
  if (!m) throw new Error(`no decode figures in:\n${err}`);
  return { tokPerSec: Number(m[1]) / Number(m[2]), wire: /cluster: (.*)/.exec(err)?.[1], err };
}

/** `taskset -c CPU` when pinning is possible: two nodes sharing one machine's cores otherwise steal
 *  each other's CPU at every wake-up, which separate machines do not. */
const PIN = Bun.which("taskset") && navigator.hardwareConcurrency >= 2;
const pin = (cpu: number | undefined) => (cpu === undefined || !PIN ? [] : ["taskset", "-c", String(cpu)]);

function runRoot(model: string, threads: number, workers?: string, ns?: string, cpu?: number, extra: string[] = []): Run {
  const cmd = [...pin(cpu), BUN, MAIN, "--root", "-m", model, "-p", PROMPT, "-n", String(nTokens), "--temp", "0", "-t", String(threads), ...(workers ? ["--workers", workers] : []), ...extra];
  const p = Bun.spawnSync(ns ? ["ip", "netns", "exec", ns, ...cmd] : cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`root failed:\n${p.stderr}`);
  return parseRun(p.stderr.toString());
}

async function startWorker(model: string, host: string, ns?: string, cpu?: number) {
  const t0 = performance.now();
  const cmd = [...pin(cpu), BUN, MAIN, "--port", "0", "--host", host, "-m", model, "-t", "1"];
  const proc = Bun.spawn(ns ? ["ip", "netns", "exec", ns, ...cmd] : cmd, { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  let text = "";
  const reader = proc.stderr.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`worker exited: ${text}`);
    text += new TextDecoder().decode(value);
    const m = /listening on ([\d.]+:\d+)/.exec(text);
    if (m) return { proc, addr: m[1]!, readySeconds: (performance.now() - t0) / 1000 };
  }
}

function rss(pid: number): { rss: number; file: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? 0) * 1024;
  return { rss: kb("VmRSS"), file: kb("RssFile") };
}

/**
 * The model file's pages mapped into process `pid` (/proc/PID/pagemap, root only), split by where they
 * lie: inside the byte ranges of node 1 of 2's slices (its rows of q, k, v, gate, up and the logits;
 * the tokens' embedding rows), or outside them. On one machine both nodes share the page cache, and
 * the kernel maps whole large folios (built by the other node's readahead) at a fault, so RssFile
 * overstates what a worker on its own machine would read; the split shows by how much.
 */
function mappedPages(pid: number, path: string): { inside: number; outside: number } | null {
  try {
    const map = readFileSync(`/proc/${pid}/maps`, "utf8").split("\n").find((l) => l.endsWith(path));
    if (!map) return null;
    const [lo, hi] = map.split(" ")[0]!.split("-").map((x) => parseInt(x, 16)) as [number, number];
    const pages = (hi - lo) / 4096, buf = Buffer.alloc(pages * 8);
    const fd = openSync(`/proc/${pid}/pagemap`, "r");
    try {
      readSync(fd, buf, 0, buf.length, (lo / 4096) * 8);
    } finally {
      closeSync(fd);
    }
    const g = GGUFFile.open(path), c = readConfig(g), s = partition(c, 2)[1]!, vocab = splitVocab(c.vocabSize, 2)[1]!;
    const inside = new Uint8Array(pages);
    const mark = (name: string, r0: number, r1: number) => {
      const t = g.tensor(name), rb = typeBytes(t.type, t.dims[0]!);
      for (let p = Math.floor((t.offset + r0 * rb) / 4096); p < Math.ceil((t.offset + r1 * rb) / 4096); p++) inside[p] = 1;
    };
    for (let l = 0; l < c.nLayers; l++) {
      mark(`blk.${l}.attn_q.weight`, s.heads.start * c.headDim, s.heads.end * c.headDim);
      for (const kv of ["attn_k", "attn_v"]) mark(`blk.${l}.${kv}.weight`, s.kvHeads.start * c.headDim, s.kvHeads.end * c.headDim);
      for (const f of ["ffn_gate", "ffn_up"]) mark(`blk.${l}.${f}.weight`, s.ffn.start, s.ffn.end);
      for (const n of ["attn_norm", "ffn_norm"]) mark(`blk.${l}.${n}.weight`, 0, 1);
    }
    // the tokens' embedding rows are counted as outside: a few KiB per token
    mark(outputTensorName(g), vocab.start, vocab.end);
    let a = 0, b = 0;
    for (let p = 0; p < pages; p++) {
      if (!((buf.readBigUInt64LE(p * 8) >> 63n) & 1n)) continue;
      if (inside[p]) a += 4096;
      else b += 4096;
    }
    return { inside: a, outside: b };
  } catch {
    return null;
  }
}

function sh(cmd: string): void {
  const p = Bun.spawnSync(["sh", "-c", cmd], { stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd}: ${p.stderr}`);
}

const model = await modelPath();
const size = statSync(model).size;
console.log(`model ${model} (${(size / 2 ** 20).toFixed(0)} MiB), ${nTokens} decoded tokens, prompt "${PROMPT}"`);
console.log(`command: bun scripts/bench-cluster.ts ${args.join(" ")}`.trimEnd());

/** The best of a configuration's runs, with the spread. */
function best(rs: Run[]): Run & { spread: string } {
  const b = rs.reduce((x, y) => (y.tokPerSec > x.tokPerSec ? y : x));
  const lo = Math.min(...rs.map((r) => r.tokPerSec));
  return { ...b, spread: rs.length > 1 ? `best of ${rs.length}, lowest ${lo.toFixed(2)}` : "1 run" };
}

runRoot(model, 2); // warm the page cache
const w = await startWorker(model, "127.0.0.1");
const pinned = PIN ? await startWorker(model, "127.0.0.1", undefined, 1) : null;
const singles: Run[] = [], pairs: Run[] = [], pinnedPairs: Run[] = [];
let mem: { rss: number; file: number } | null = null;
let pages: { inside: number; outside: number } | null = null;
try {
  for (let i = 0; i < runs; i++) {
    singles.push(runRoot(model, 2));
    pairs.push(runRoot(model, 1, w.addr));
    if (!mem) {
      mem = rss(w.proc.pid!);
      pages = mappedPages(w.proc.pid!, model);
    }
    if (pinned) pinnedPairs.push(runRoot(model, 1, pinned.addr, undefined, 0));
  }
} finally {
  w.proc.kill();
  pinned?.proc.kill();
}
const single = best(singles), pair = best(pairs), pinnedPair = pinned ? best(pinnedPairs) : null;

const rows: [string, string][] = [
  ["1 node, 2 threads", `${single.tokPerSec.toFixed(2)} tokens/s  (${single.spread})`],
  ["root + 1 worker on 127.0.0.1, 1 thread each", `${pair.tokPerSec.toFixed(2)} tokens/s  ratio ${(pair.tokPerSec / single.tokPerSec).toFixed(3)} (target >= 0.97; ${pair.spread})`],
  ["  on the wire", pair.wire ?? "-"],
  pinnedPair
    ? ["the same, root and worker pinned to CPU 0 and 1", `${pinnedPair.tokPerSec.toFixed(2)} tokens/s  ratio ${(pinnedPair.tokPerSec / single.tokPerSec).toFixed(3)} (separate cores, as on separate machines; ${pinnedPair.spread})`]
    : ["pinned run", "skipped (needs taskset and 2 CPUs)"],
  ["worker start-up to listening", `${(w.readySeconds * 1000).toFixed(0)} ms (target < 200 ms)`],
  ["worker resident memory after the run", `${(mem!.rss / 2 ** 20).toFixed(0)} MiB, of which file pages ${(mem!.file / 2 ** 20).toFixed(0)} MiB = ${(mem!.file / size).toFixed(2)} of the model`],
  pages
    ? ["  the file pages by place", `${(pages.inside / 2 ** 20).toFixed(0)} MiB in its slices (${(pages.inside / size).toFixed(2)} of the model), ${(pages.outside / 2 ** 20).toFixed(0)} MiB outside (large folios of the shared page cache; /proc/PID/pagemap)`]
    : ["  the file pages by place", "not measured (needs root for /proc/PID/pagemap)"],
];

// Three nodes: every reduction through the root (two crossings of the network, the root sending
// the sum to each worker) against the workers linked to each other (one crossing, each node sending
// its partial to every other). On this machine three single-thread nodes share two CPUs.
if (!args.includes("--no-three")) {
  const w3 = [await startWorker(model, "127.0.0.1"), await startWorker(model, "127.0.0.1")];
  try {
    const list = w3.map((x) => x.addr).join(",");
    const star: Run[] = [], mesh: Run[] = [];
    for (let i = 0; i < runs; i++) {
      star.push(runRoot(model, 1, list, undefined, undefined, ["--mesh", "off"]));
      mesh.push(runRoot(model, 1, list));
    }
    const st = best(star), me = best(mesh);
    rows.push(["root + 2 workers on 127.0.0.1, 1 thread each", ""]);
    rows.push(["  reductions through the root (--mesh off)", `${st.tokPerSec.toFixed(2)} tokens/s  (${st.spread}); ${st.wire ?? "-"}`]);
    rows.push(["  workers linked to each other (default)", `${me.tokPerSec.toFixed(2)} tokens/s  ${(me.tokPerSec / st.tokPerSec).toFixed(2)}x (${me.spread}); ${me.wire ?? "-"}`]);
  } finally {
    for (const x of w3) x.proc.kill();
  }
}

/**
 * A CPU cgroup that lets its processes run `fraction` of one CPU (cgroup v1 cpu controller or v2
 * cpu.max), fine-grained (2 ms period): a node that many times slower, to compare --split even with
 * --split auto. Null when this machine does not allow it (not root, no cpu controller).
 */
function slowCgroup(fraction: number): { add(pid: number): void; remove(): void } | null {
  const period = 2000, quota = Math.round(fraction * period);
  const v1 = "/sys/fs/cgroup/cpu", v2 = "/sys/fs/cgroup";
  try {
    if (existsSync(`${v1}/cpu.cfs_quota_us`)) {
      const dir = `${v1}/dairllm-bench-slow`;
      if (!existsSync(dir)) mkdirSync(dir);
      writeFileSync(`${dir}/cpu.cfs_period_us`, String(period));
      writeFileSync(`${dir}/cpu.cfs_quota_us`, String(quota));
      return { add: (pid) => writeFileSync(`${dir}/cgroup.procs`, String(pid)), remove: () => rmdirSync(dir) };
    }
    if (readFileSync(`${v2}/cgroup.controllers`, "utf8").split(/\s+/).includes("cpu")) {
      const dir = `${v2}/dairllm-bench-slow`;
      if (!existsSync(dir)) mkdirSync(dir);
      writeFileSync(`${dir}/cpu.max`, `${quota} ${period}`);
      return { add: (pid) => writeFileSync(`${dir}/cgroup.procs`, String(pid)), remove: () => rmdirSync(dir) };
    }
  } catch {
    return null;
  }
  return null;
}

// Nodes of unequal speed: the worker limited to half a CPU (a slower machine), the root on a whole
// one; equal shares against --split auto and the ideal 2,1.
const slow = !args.includes("--no-slow") && PIN && process.getuid?.() === 0 ? slowCgroup(0.5) : null;
if (slow) {
  const sw = await startWorker(model, "127.0.0.1", undefined, 1);
  try {
    slow.add(sw.proc.pid!);
    const even: Run[] = [], auto: Run[] = [], fixed: Run[] = [];
    for (let i = 0; i < runs; i++) {
      even.push(runRoot(model, 1, sw.addr, undefined, 0));
      auto.push(runRoot(model, 1, sw.addr, undefined, 0, ["--split", "auto"]));
      fixed.push(runRoot(model, 1, sw.addr, undefined, 0, ["--split", "2,1"]));
    }
    const e = best(even), a = best(auto), f = best(fixed);
    const measured = /split by measured .*?: (.*)/.exec(a.err)?.[1] ?? "?";
    rows.push(["unequal nodes: worker at half a CPU (cgroup)", ""]);
    rows.push(["  --split even", `${e.tokPerSec.toFixed(2)} tokens/s  (${e.spread})`]);
    rows.push(["  --split auto", `${a.tokPerSec.toFixed(2)} tokens/s  ${(a.tokPerSec / e.tokPerSec).toFixed(2)}x even (${a.spread}; measured ${measured})`]);
    rows.push(["  --split 2,1", `${f.tokPerSec.toFixed(2)} tokens/s  ${(f.tokPerSec / e.tokPerSec).toFixed(2)}x even (${f.spread})`]);
  } finally {
    sw.proc.kill();
    await sw.proc.exited;
    try {
      slow.remove();
    } catch {
      /* the cgroup empties a moment after the worker exits */
    }
  }
} else {
  rows.push(["unequal nodes", "skipped (needs root, taskset, 2 CPUs and a cpu cgroup; or --no-slow)"]);
}

if (!args.includes("--no-netns") && process.getuid?.() === 0 && Bun.which("ip") && Bun.which("tc")) {
  // two hosts: the worker in namespace dlw, the root in dlr, a veth pair between them, both ends shaped
  const cleanup = () => Bun.spawnSync(["sh", "-c", "ip netns del dlw 2>/dev/null; ip netns del dlr 2>/dev/null"]);
  cleanup();
  try {
    sh("ip netns add dlw && ip netns add dlr && ip link add dlr0 type veth peer name dlw0");
    sh("ip link set dlw0 netns dlw && ip link set dlr0 netns dlr");
    sh("ip -n dlw addr add 10.77.0.2/24 dev dlw0 && ip -n dlr addr add 10.77.0.1/24 dev dlr0");
    sh("ip -n dlw link set dlw0 up && ip -n dlr link set dlr0 up && ip -n dlw link set lo up && ip -n dlr link set lo up");
    // netem gives rate and delay; kernels built without it (CONFIG_NET_SCH_NETEM) still have tbf
    let shaping = "netem 1 Gbit/s, 0.1 ms each way";
    try {
      sh("ip netns exec dlw tc qdisc add dev dlw0 root netem rate 1gbit delay 0.1ms");
      sh("ip netns exec dlr tc qdisc add dev dlr0 root netem rate 1gbit delay 0.1ms");
    } catch {
      shaping = "tbf 1 Gbit/s, no added delay: this kernel has no netem";
      sh("ip netns exec dlw tc qdisc add dev dlw0 root tbf rate 1gbit burst 64kb latency 10ms");
      sh("ip netns exec dlr tc qdisc add dev dlr0 root tbf rate 1gbit burst 64kb latency 10ms");
    }
    const ping = Bun.spawnSync(["ip", "netns", "exec", "dlr", "ping", "-c", "5", "-i", "0.2", "-q", "10.77.0.2"], { stdout: "pipe" }).stdout.toString();
    const rtt = /= [\d.]+\/([\d.]+)\//.exec(ping)?.[1];
    // pinned like the pinned pair on 127.0.0.1: two machines do not share cores
    const wn = await startWorker(model, "10.77.0.2", "dlw", PIN ? 1 : undefined);
    try {
      const fars: Run[] = [];
      for (let i = 0; i < runs; i++) fars.push(runRoot(model, 1, wn.addr, "dlr", PIN ? 0 : undefined));
      const far = best(fars);
      rows.push([`root + 1 worker, two netns (${shaping}${rtt ? `; ping RTT ${rtt} ms` : ""}${PIN ? "; pinned to CPU 0 and 1" : ""})`, `${far.tokPerSec.toFixed(2)} tokens/s  ratio ${(far.tokPerSec / single.tokPerSec).toFixed(3)} (target >= 0.9; ${far.spread})`]);
      rows.push(["  on the wire", far.wire ?? "-"]);
    } finally {
      wn.proc.kill();
    }
  } catch (e) {
    rows.push(["netns run", `not possible here: ${(e as Error).message.split("\n")[0]}`]);
  } finally {
    cleanup();
  }
} else {
  rows.push(["netns run", "skipped (needs root, ip and tc; or --no-netns)"]);
}

console.log();
for (const [k, v] of rows) console.log(`${k.padEnd(48)} ${v}`);

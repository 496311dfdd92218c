// Layer streaming benchmark (--max-memory): a generated model whose weights are >= 3x the budget, run
// on one node and on a root + 1 worker, each streaming its slices through the budget. Printed side by
// side, all measured in this run:
//   - peak resident memory (VmHWM) minus the runtime's own (VmRSS before the model is opened), against
//     budget + KV cache + activations (target: within 10 %);
//   - tokens/s, and the bytes read per second while decoding against the file's sequential read speed
//     with the page cache bypassed (O_DIRECT) (target: >= 0.8);
//   - the same model without a budget (mapped), after dropping its pages from the page cache.
//
//   bun scripts/bench-stream.ts [--model F.gguf] [--budget 360M] [-n TOKENS]
// Without --model, the TinyLlama-shape Q8_0 model (1.09 GiB) is generated once into build/models/.
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { tinyllamaModel } from "./models";
import { formatBytes, parseSize } from "../src/model/streamed";
import { sequentialReadSpeed } from "../src/model/stream";

const ROOT = join(import.meta.dir, "..");
const BUN = process.execPath;
const args = process.argv.slice(2);
const arg = (name: string) => (args.indexOf(name) >= 0 ? args[args.indexOf(name) + 1] : undefined);
const nTokens = Number(arg("-n") ?? 8);
const budgetText = arg("--budget") ?? "360M";
const budget = parseSize(budgetText);

function modelPath(): string {
  const given = arg("--model");
  if (given) return given;
  return tinyllamaModel("q8_0");
}

/** Drops the file's pages from the page cache (dd calls posix_fadvise(DONTNEED) with iflag=nocache). */
function dropCache(path: string): void {
  const p = Bun.spawnSync(["dd", `if=${path}`, "iflag=nocache", "count=0", "status=none"], { stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`dd iflag=nocache failed: ${p.stderr}`);
}

interface RunResult {
  budget: number | null;
  kvCache: number;
  activations: number;
  baselineRss: number;
  vmHWM: number;
  tokensPerSecond: number;
  decodeSeconds: number;
  bytesReadDecode: number;
  stream: { direct: boolean; waitSeconds: number; readSeconds: number; bytesRead: number } | null;
  generated: number[];
}

function run(model: string, extra: string[]): RunResult {
  const p = Bun.spawnSync([BUN, join(ROOT, "scripts", "stream-run.ts"), model, String(nTokens), ...extra], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`stream-run failed:\n${p.stderr}`);
  return JSON.parse(p.stdout.toString().trim().split("\n").pop()!) as RunResult;
}

function status(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const m = /^(Vm\w+|Rss\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) * 1024;
  }
  return out;
}

async function startWorker(model: string, extra: string[]) {
  const proc = Bun.spawn([BUN, join(ROOT, "src", "main.ts"), "--port", "0", "--host", "127.0.0.1", "-m", model, "-t", "1", ...extra], { cwd: ROOT, stdout: "ignore", stderr: "pipe" });
  let text = "";
  const reader = proc.stderr.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`worker exited: ${text}`);
    text += new TextDecoder().decode(value);
    const m = /listening on ([\d.]+:\d+)/.exec(text);
    if (m) {
      (async () => {
        for (;;) {
          const r = await reader.read();
          if (r.done) break;
          text += new TextDecoder().decode(r.value);
        }
      })();
      return { proc, addr: m[1]!, baselineRss: status(proc.pid).VmRSS!, log: () => text };
    }
  }
}

const model = modelPath();
const size = statSync(model).size;
console.log(`dairllm layer streaming: ${model} (${formatBytes(size)}), budget ${formatBytes(budget)} (model / budget = ${(size / budget).toFixed(2)}), ${nTokens} decoded tokens`);
console.log(`command: bun scripts/bench-stream.ts ${args.join(" ")}`.trimEnd());
if (size < 3 * budget) console.log(`note: the model is less than 3x the budget`);

// the reference: the best sequential read of the whole file this disk gives, over read sizes and
// reads in flight (the stream reads whole matrices, up to two at a time)
let seq = { bytesPerSecond: 0, bytes: 0, direct: true };
for (const chunk of [16, 64]) {
  for (const inFlight of [1, 2, 4]) {
    dropCache(model);
    const s = await sequentialReadSpeed(model, { direct: true, inFlight, chunk: chunk * 2 ** 20 });
    console.log(`sequential read, page cache bypassed (${s.direct ? "O_DIRECT" : "buffered: O_DIRECT refused"}), ${inFlight} read(s) of ${chunk} MiB in flight: ${(s.bytesPerSecond / 1e9).toFixed(2)} GB/s`);
    if (s.bytesPerSecond > seq.bytesPerSecond) seq = s;
  }
}
console.log(`reference: ${(seq.bytesPerSecond / 1e9).toFixed(2)} GB/s`);

const rows: string[] = [];
// sharedDisk: the node reads a disk another node reads at the same time, so only the nodes' sum is
// compared with the disk's sequential speed (the "both nodes" row)
const row = (name: string, r: RunResult, hwm: number, base: number, readBytes: number | null, sharedDisk = false) => {
  const allowed = (r.budget ?? 0) + r.kvCache + r.activations;
  const used = hwm - base;
  const mem = r.budget ? `${formatBytes(used)} / ${formatBytes(allowed)} = ${(used / allowed).toFixed(3)} (<= 1.10: ${used <= 1.1 * allowed ? "met" : "MISSED"})` : `${formatBytes(used)} (mapped: the page cache holds the model)`;
  const gbs = readBytes === null ? 0 : readBytes / r.decodeSeconds;
  const speed =
    readBytes === null ? ""
    : sharedDisk ? `  read ${(gbs / 1e9).toFixed(2)} GB/s (its share of the disk both nodes read: see "both nodes")`
    : `  read ${(gbs / 1e9).toFixed(2)} GB/s = ${(gbs / seq.bytesPerSecond).toFixed(3)} of sequential (>= 0.8: ${gbs / seq.bytesPerSecond >= 0.8 ? "met" : "MISSED"})`;
  rows.push(`${name.padEnd(34)} ${r.tokensPerSecond.toFixed(2).padStart(7)} tokens/s  peak - runtime ${mem}${speed}`);
};

// 1 node, streamed
dropCache(model);
const one = run(model, ["--max-memory", budgetText, "--threads", "2"]);
row("1 node, --max-memory", one, one.vmHWM, one.baselineRss, one.bytesReadDecode);

// 1 node, mapped (the page cache emptied first: its first token reads from disk)
dropCache(model);
const mapped = run(model, ["--threads", "2"]);
row("1 node, mapped (no budget)", mapped, mapped.vmHWM, mapped.baselineRss, null);

// root + 1 worker, each streaming its slices through the budget
dropCache(model);
const w = await startWorker(model, ["--max-memory", budgetText]);
let pair: RunResult;
let workerHWM: number;
try {
  pair = run(model, ["--max-memory", budgetText, "--threads", "1", "--workers", w.addr, "--wire", "f32"]);
  workerHWM = status(w.proc.pid).VmHWM!;
  await Bun.sleep(300); // the worker logs its stream's figures when the session ends
} finally {
  w.proc.kill();
}
row("root + 1 worker: root", pair, pair.vmHWM, pair.baselineRss, pair.bytesReadDecode, true);
// the worker's KV cache and activations are the root's (same slice sizes for 2 nodes)
row("root + 1 worker: worker", { ...pair }, workerHWM, w.baselineRss, null);
const wm = /streamed ([\d.]+) bytes/.exec(w.log());
if (wm) {
  // both nodes read the same disk here: their bytes together against the disk's sequential speed
  // (the worker reports its whole session; its decode share is taken to be the root's)
  const decodeShare = pair.bytesReadDecode / pair.stream!.bytesRead;
  const both = (pair.bytesReadDecode + Number(wm[1]) * decodeShare) / pair.decodeSeconds;
  rows.push(`${"root + 1 worker: both nodes".padEnd(34)} read ${(both / 1e9).toFixed(2)} GB/s from the one disk = ${(both / seq.bytesPerSecond).toFixed(3)} of sequential (>= 0.8: ${both / seq.bytesPerSecond >= 0.8 ? "met" : "MISSED"})`);
}

console.log();
for (const r of rows) console.log(r);
const same = one.generated.join() === mapped.generated.join() && pair.generated.join() === mapped.generated.join();
console.log(`\ngreedy tokens identical across the three runs (f32 wire): ${same ? "yes" : "NO"}`);
console.log(`stream waits (root, 1 node): ${one.stream?.waitSeconds.toFixed(3)} s of ${one.decodeSeconds.toFixed(3)} s decoding; reads in flight ${one.stream?.readSeconds.toFixed(3)} s`);

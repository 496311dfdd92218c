// One root run for bench-stream.ts, in its own process so that its peak memory is its own: opens the
// model (streamed with --max-memory, or mapped), generates N tokens greedily, and prints one JSON line
// with the speeds, the stream's read figures and VmHWM / VmRSS from /proc/self/status.
//
//   bun scripts/stream-run.ts MODEL N [--max-memory SIZE] [--workers H:P] [--wire f32] [--threads T]
import { readFileSync } from "node:fs";
import { openEngine } from "../src/engine";
import { parseSize } from "../src/model/streamed";
import { memoryBesidesWeights } from "../src/cluster/worker";
import { partition } from "../src/cluster/partition";
import { GGMLType } from "../src/native/types";

function status(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync("/proc/self/status", "utf8").split("\n")) {
    const m = /^(Vm\w+|Rss\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) * 1024;
  }
  return out;
}

const [model, n, ...rest] = process.argv.slice(2);
const opt = (name: string) => (rest.indexOf(name) >= 0 ? rest[rest.indexOf(name) + 1] : undefined);
const budget = opt("--max-memory") ? parseSize(opt("--max-memory")!) : undefined;
const workers = opt("--workers")?.split(",") ?? [];
const tokens = Number(n ?? 16);
const ctx = 64;
const before = status();
const wire = opt("--wire") === "f32" ? GGMLType.F32 : GGMLType.Q8_0;
const e = await openEngine(model!, { threads: Number(opt("--threads") ?? 1), maxMemory: budget, ctx, workers, wire, log: (l) => process.stderr.write(`${l}\n`) });
const cache = e.model.newCache(ctx);
const prompt = [1, 45, 96, 173];
let t0 = performance.now();
let logits = await e.model.forward(prompt, 0, cache);
const promptSeconds = (performance.now() - t0) / 1000;
const read0 = e.streamed ? e.streamed.stats.bytesRead : 0;
const generated: number[] = [];
t0 = performance.now();
for (let i = 0; i < tokens; i++) {
  let best = 0;
  for (let j = 1; j < logits.length; j++) if (logits[j]! > logits[best]!) best = j;
  generated.push(best);
  logits = await e.model.forward([best], prompt.length + i, cache);
}
const decodeSeconds = (performance.now() - t0) / 1000;
const st = e.streamed?.stats;
const other = memoryBesidesWeights(e.config, partition(e.config, workers.length + 1)[0]!, ctx, GGMLType.F32);
const after = status();
e.close();
console.log(
  JSON.stringify({
    budget: budget ?? null,
    kvCache: other.kvCache,
    activations: other.activations,
    baselineRss: before.VmRSS,
    vmHWM: after.VmHWM,
    rssAnon: after.RssAnon,
    rssFile: after.RssFile,
    promptSeconds,
    decodeSeconds,
    tokensPerSecond: tokens / decodeSeconds,
    bytesReadDecode: st ? st.bytesRead - read0 : 0,
    stream: st ?? null,
    generated,
  }),
);
process.exit(0);

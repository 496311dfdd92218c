// What profiling costs: decode tokens/s of the TinyLlama-shape Q4_0 model with the profiler off (the
// plain kernels: no timers on the hot path) and on (every operation timed), measured alternately in
// one run, best of `--rounds` each, plus the profiler's own estimate of its cost.
//
//   bun scripts/bench-profile.ts [-n DECODE_TOKENS] [--rounds R] [--threads T] [--type q4_0]
import { join } from "node:path";
import { tinyllamaModel } from "./models";
import { openEngine } from "../src/engine";
import { DEFAULT_SAMPLER, Sampler } from "../src/model/sampler";
import { runProfile } from "../src/profile/run";

const args = process.argv.slice(2);
const ai = (n: string) => (args.indexOf(n) >= 0 ? args[args.indexOf(n) + 1] : undefined);
const nDecode = Number(ai("-n") ?? 32);
const rounds = Number(ai("--rounds") ?? 3);
const threads = Number(ai("--threads") ?? 2);
const type = ai("--type") ?? "q4_0";
const PROMPT = "The quick brown fox jumps over the lazy dog";

const path = tinyllamaModel(type);

console.log(`dairllm profiler cost: TinyLlama-shape ${type.toUpperCase()}, ${nDecode} decoded tokens, ${threads} threads, best of ${rounds}`);
console.log(`command: bun scripts/bench-profile.ts ${args.join(" ")}`.trimEnd());
const off = await openEngine(path, { threads, ctx: 512 });
const on = await openEngine(path, { threads, ctx: 512, profile: true });
const sampler = { ...DEFAULT_SAMPLER, seed: 1 };

/** Decode tokens/s with the profiler off: the same loop as runProfile, untimed. */
async function decodeOff(): Promise<number> {
  const prompt = off.tokenizer.encode(PROMPT, { addSpecial: true, parseSpecial: true });
  const cache = off.model.newCache(off.ctx);
  const s = new Sampler(sampler);
  s.accept(prompt);
  let logits = await off.model.forward(prompt, 0, cache);
  const t0 = performance.now();
  for (let i = 0; i < nDecode; i++) logits = await off.model.forward([s.sample(logits)], prompt.length + i, cache);
  return nDecode / ((performance.now() - t0) / 1000);
}

await decodeOff(); // warm: page the weights in, JIT
let bestOff = 0, bestOn = 0, estimate = 0;
for (let r = 0; r < rounds; r++) {
  bestOff = Math.max(bestOff, await decodeOff());
  const report = await runProfile(on, { prompt: PROMPT, tokens: nDecode, sampler });
  if (report.decode.tokensPerSecond > bestOn) [bestOn, estimate] = [report.decode.tokensPerSecond, report.overhead.share];
  console.log(`  round ${r + 1}: off ${bestOff.toFixed(2)} tokens/s, on ${report.decode.tokensPerSecond.toFixed(2)} tokens/s (${report.overhead.timersPerToken.toFixed(0)} timed calls/token x ${report.overhead.nsPerTimer.toFixed(0)} ns)`);
}
off.close();
on.close();
console.log();
console.log(`profiler off: ${bestOff.toFixed(2)} tokens/s (no timers: plain kernels, one null check per matmul)`);
console.log(`profiler on:  ${bestOn.toFixed(2)} tokens/s`);
console.log(`measured cost of profiling: ${(((bestOff - bestOn) / bestOff) * 100).toFixed(2)} % of decode speed; the profiler's own estimate: ${(estimate * 100).toFixed(2)} %`);

// Layer streaming (--max-memory): a node's weight slices read from disk through a fixed budget of
// memory instead of mapped, so that a node can serve more model than its RAM (AirLLM's idea, here
// inside tensor parallelism: each node streams only its own slices).
//
// The slices are cut exactly as on the mapped path (sliceLayer); their byte ranges in the file become
// the units of a WeightStream: per layer, the attention matrices (q, k, v, o) and the feed-forward
// matrices (gate, up, down), and on the root the output matrix in row chunks. The stream reads them
// in forward order into one ring buffer of the budget's size, ahead of the computation as far as the
// ring allows, and reuses a unit's space once the computation has passed it.
import { type GGMLType, typeBytes } from "../native/types";
import type { ModelConfig } from "./config";
import type { GGUFFile } from "./gguf";
import { type LayerSlice, type Matrix, Phase, sliceLayer, type Slice, type Weights } from "./llama";
import { type Unit, WeightStream } from "./stream";

const MATRICES: readonly (readonly ("wq" | "wk" | "wv" | "wo" | "wGate" | "wUp" | "wDown")[])[] = [
  ["wq", "wk", "wv", "wo"], // Phase.Attention
  ["wGate", "wUp", "wDown"], // Phase.FeedForward
];

export interface StreamOptions {
  /** bytes of weights this node may hold in memory */
  budget: number;
  /** the memory the node needs besides weights (KV cache, activations), for the messages */
  otherBytes?: { kvCache: number; activations: number };
  /** O_DIRECT reads (default true): the page cache is bypassed, as on a machine whose RAM cannot hold the model */
  direct?: boolean;
  log?: (line: string) => void;
}

export function formatBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** Parses a size like 512M, 2G, 1.5G, 300000000 (bytes); K/M/G/T are powers of 1024. */
export function parseSize(s: string, flag = "--max-memory"): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(s);
  if (!m) throw new Error(`${flag}: "${s}" is not a size (examples: 512M, 2G, 1.5G)`);
  const v = Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase());
  if (!(v >= 1)) throw new Error(`${flag}: "${s}" is not a positive size`);
  return Math.floor(v);
}

export class StreamedWeights {
  /** the file byte range of a view of the mapped file */
  private static span(g: GGUFFile, data: Uint8Array) {
    return { offset: data.byteOffset - g.bytes.byteOffset, length: data.byteLength };
  }

  private constructor(
    private readonly stream: WeightStream,
    private readonly plan: LayerSlice[],
    private readonly output: Matrix | null,
    /** output rows per chunk */
    readonly outputRows: number,
    readonly outputChunks: number,
  ) {}

  /**
   * Opens the stream of a node's slices of every layer (and, on the root, of the output matrix).
   * Throws, naming the minimum, when the budget cannot hold the largest unit.
   */
  /** The stream's units for a node's slice: two per layer, then the output matrix in row chunks. */
  private static units(g: GGUFFile, c: ModelConfig, w: Weights, slice: Slice, withOutput: boolean) {
    const plan = w.layers.map((L) => sliceLayer(L, c, slice));
    const units: Unit[] = [];
    for (let l = 0; l < plan.length; l++) {
      for (const phase of [Phase.Attention, Phase.FeedForward]) {
        units.push({ name: `layer ${l} ${phase === Phase.Attention ? "attention" : "feed-forward"}`, spans: MATRICES[phase]!.map((k) => StreamedWeights.span(g, plan[l]![k].data)) });
      }
    }
    const layerMin = WeightStream.minimumBudget(units);
    let outputRows = 0, outputChunks = 0;
    if (withOutput) {
      // row chunks no larger than the largest layer unit: the output does not raise the minimum
      const rowBytes = typeBytes(w.output.type, w.output.nIn);
      outputRows = Math.max(1, Math.min(w.output.nOut, Math.floor((layerMin - 8192) / rowBytes)));
      outputChunks = Math.ceil(w.output.nOut / outputRows);
      for (let i = 0; i < outputChunks; i++) {
        const r0 = i * outputRows, r1 = Math.min(w.output.nOut, r0 + outputRows);
        units.push({ name: `output rows ${r0}..${r1 - 1}`, spans: [StreamedWeights.span(g, w.output.data.subarray(r0 * rowBytes, r1 * rowBytes))] });
      }
    }
    return { plan, units, outputRows, outputChunks, min: WeightStream.minimumBudget(units) };
  }

  /** The smallest --max-memory a node computing `slice` can stream through. */
  static minimumBudget(g: GGUFFile, c: ModelConfig, w: Weights, slice: Slice, withOutput: boolean): number {
    return StreamedWeights.units(g, c, w, slice, withOutput).min;
  }

  /**
   * Opens the stream of a node's slices of every layer (and, on the root, of the output matrix).
   * Throws, naming the minimum, when the budget cannot hold the largest unit.
   */
  static open(path: string, g: GGUFFile, c: ModelConfig, w: Weights, slice: Slice, withOutput: boolean, o: StreamOptions): StreamedWeights {
    const { plan, units, outputRows, outputChunks, min } = StreamedWeights.units(g, c, w, slice, withOutput);
    if (o.budget < min) {
      const other = o.otherBytes ? `; the KV cache (${formatBytes(o.otherBytes.kvCache)}) and activations (${formatBytes(o.otherBytes.activations)}) come on top` : "";
      throw new Error(`--max-memory ${formatBytes(o.budget)} is below the ${formatBytes(min)} of weights this node needs at least: its largest layer slice (${units.find((u) => WeightStream.minimumBudget([u]) === min)?.name}) must fit${other}`);
    }
    if (o.budget < 2 * min) o.log?.(`--max-memory ${formatBytes(o.budget)} holds only one layer slice of ${formatBytes(min)}: reading will not overlap computing (${formatBytes(2 * min)} or more lets it)`);
    const stream = WeightStream.open(path, units, o.budget, { direct: o.direct ?? true, log: o.log });
    return new StreamedWeights(stream, plan, withOutput ? w.output : null, outputRows, outputChunks);
  }

  /** Layer l's slice with the phase's matrices loaded (the others are not to be touched). */
  layer(l: number, phase: Phase): LayerSlice | Promise<LayerSlice> {
    const got = this.stream.acquire(2 * l + phase);
    return got instanceof Promise ? got.then((v) => this.bind(l, phase, v)) : this.bind(l, phase, got);
  }

  private bind(l: number, phase: Phase, views: Uint8Array[]): LayerSlice {
    const L: LayerSlice = { ...this.plan[l]! };
    MATRICES[phase]!.forEach((k, i) => {
      L[k] = { ...L[k], data: views[i]! } as never;
    });
    return L;
  }

  release(l: number, phase: Phase): void {
    this.stream.release(2 * l + phase);
  }

  /** Chunk i of the output matrix: rows r0..r1-1, loaded. */
  outputChunk(i: number): { r0: number; r1: number; data: Uint8Array; type: GGMLType } | Promise<{ r0: number; r1: number; data: Uint8Array; type: GGMLType }> {
    const out = this.output!;
    const r0 = i * this.outputRows, r1 = Math.min(out.nOut, r0 + this.outputRows);
    const got = this.stream.acquire(2 * this.plan.length + i);
    return got instanceof Promise ? got.then((v) => ({ r0, r1, data: v[0]!, type: out.type })) : { r0, r1, data: got[0]!, type: out.type };
  }

  releaseOutput(i: number): void {
    this.stream.release(2 * this.plan.length + i);
  }

  get stats() {
    return this.stream.stats;
  }

  close(): Promise<void> {
    return this.stream.close();
  }
}

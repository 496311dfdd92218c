// Model hyper-parameters, read from GGUF metadata (`<arch>.*` keys) and checked for consistency.
import { GGUFError, type GGUFFile } from "./gguf";
import { RopeMode } from "../native/types";

export type Arch = "llama" | "qwen2" | "qwen3";
export const SUPPORTED_ARCHS: readonly Arch[] = ["llama", "qwen2", "qwen3"];

export interface ModelConfig {
  arch: Arch;
  name: string;
  dim: number; //         embedding length
  hiddenDim: number; //   feed-forward length
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number; //     per attention head (key_length when given, else dim / heads)
  nRot: number; //        rotated dimensions per head
  vocabSize: number;
  contextLength: number; // the context the model was trained for
  ropeBase: number;
  ropeMode: RopeMode;
  rmsEps: number;
}

export function readConfig(g: GGUFFile): ModelConfig {
  const arch = g.get("general.architecture", "string");
  if (!SUPPORTED_ARCHS.includes(arch as Arch)) {
    throw new GGUFError(g.path, `architecture ${arch} is not supported (supported: ${SUPPORTED_ARCHS.join(", ")})`);
  }
  const key = (k: string) => `${arch}.${k}`;
  const int = (k: string, fallback?: number): number => {
    const v = fallback === undefined ? g.get(key(k), "number") : g.get(key(k), "number", fallback);
    if (!Number.isInteger(v) || v < 1 || v > 1 << 24) throw new GGUFError(g.path, `metadata ${key(k)} = ${v} is not a sensible positive integer`);
    return v;
  };
  const dim = int("embedding_length");
  const nHeads = int("attention.head_count");
  const nKvHeads = int("attention.head_count_kv", nHeads);
  const headDim = int("attention.key_length", Math.floor(dim / nHeads));
  const tokens = g.metadata.get("tokenizer.ggml.tokens");
  const vocabSize = int("vocab_size", typeof tokens === "object" ? tokens.length : g.tensor("token_embd.weight").dims[1]!);
  const cfg: ModelConfig = {
    arch: arch as Arch,
    name: g.get("general.name", "string", arch),
    dim,
    hiddenDim: int("feed_forward_length"),
    nLayers: int("block_count"),
    nHeads,
    nKvHeads,
    headDim,
    nRot: int("rope.dimension_count", headDim),
    vocabSize,
    contextLength: int("context_length", 2048),
    ropeBase: g.get(key("rope.freq_base"), "number", 10000),
    ropeMode: arch === "llama" ? RopeMode.Norm : RopeMode.Neox,
    rmsEps: g.get(key("attention.layer_norm_rms_epsilon"), "number", 1e-5),
  };
  if (nHeads % nKvHeads !== 0) throw new GGUFError(g.path, `${key("attention.head_count")} ${nHeads} is not a multiple of head_count_kv ${nKvHeads}`);
  if (cfg.nRot > headDim || cfg.nRot % 2 !== 0) throw new GGUFError(g.path, `${key("rope.dimension_count")} ${cfg.nRot} must be even and at most the head size ${headDim}`);
  if (!(cfg.ropeBase > 0) || !(cfg.rmsEps > 0)) throw new GGUFError(g.path, `rope.freq_base ${cfg.ropeBase} and layer_norm_rms_epsilon ${cfg.rmsEps} must be positive`);
  return cfg;
}

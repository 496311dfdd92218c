// A worker's plan: the layers it serves and the offset index of the tensor slices it reads, by
// tensor id (the tensor's index in the GGUF) and absolute byte offset in the model file. The root
// sends it; the worker computes the same index from its own file and its slice, and refuses to run
// when they differ (a different file layout or partition logic would compute the wrong thing).
import type { ModelConfig } from "../model/config";
import type { GGUFFile } from "../model/gguf";
import { typeBytes } from "../native/types";
import type { Range, Slice } from "./partition";
import type { OffsetEntry } from "./protocol";

/** The tensor the logits come from: output.weight, or token_embd.weight when the model ties them. */
export function outputTensorName(g: GGUFFile): string {
  return g.tensors.has("output.weight") ? "output.weight" : "token_embd.weight";
}

/** The offset index of a slice; with `logits`, a last entry for the first of those output rows. */
export function sliceOffsets(g: GGUFFile, c: ModelConfig, s: Pick<Slice, "heads" | "kvHeads" | "ffn">, logits?: Range): OffsetEntry[] {
  const ids = new Map([...g.tensors.keys()].map((name, i) => [name, i]));
  const out: OffsetEntry[] = [];
  const rows = (name: string, r0: number) => {
    const t = g.tensor(name);
    out.push({ tensor: ids.get(name)!, offset: t.offset + r0 * typeBytes(t.type, t.dims[0]!) });
  };
  const cols = (name: string, c0: number) => {
    const t = g.tensor(name);
    out.push({ tensor: ids.get(name)!, offset: t.offset + typeBytes(t.type, c0) });
  };
  const hd = c.headDim;
  for (let l = 0; l < c.nLayers; l++) {
    const p = `blk.${l}.`;
    rows(`${p}attn_q.weight`, s.heads.start * hd);
    rows(`${p}attn_k.weight`, s.kvHeads.start * hd);
    rows(`${p}attn_v.weight`, s.kvHeads.start * hd);
    cols(`${p}attn_output.weight`, s.heads.start * hd);
    rows(`${p}ffn_gate.weight`, s.ffn.start);
    rows(`${p}ffn_up.weight`, s.ffn.start);
    cols(`${p}ffn_down.weight`, s.ffn.start);
  }
  if (logits) rows(outputTensorName(g), logits.start);
  return out;
}

"""Perplexity of a model under each quantization spec, on the prompts of the paper's four CSVs.

    PYTHONPATH=build/python python examples/quant_perplexity.py --model stories260K
    PYTHONPATH=build/python python examples/quant_perplexity.py --model smollm2 --rows 100 --compute fp32

For every spec the model is loaded (and quantized) by qinterp, every prompt is scored token by
token (next-token negative log-likelihood of tokens 2..T of the prompt, padding excluded), and
the pooled perplexity exp(mean NLL) is reported. GPTQ calibrates on windows of rows of the same
four CSVs that are not among the evaluated ones (128 windows of 256 tokens by default, the spec's defaults;
far fewer tokens than in_features x 20 overfits: GPTQ then loses to round-to-nearest on held-out
text). Writes results/quant_perplexity_<model>.csv.
"""
import argparse
import csv
import math
import os
import pathlib
import sys
import time

import torch

import qinterp

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
TASKS = ["boolq", "toxicity", "piqa", "hellaswag"]
SPECS = ["fp32", "nf4", "fp4", "int8", "rtn8", "rtn4", "gptq4", "gptq3", "gptq2"]


def prompts(task, start, count):
    rows = list(csv.DictReader(open(SHARED / "datasets/paper1" / f"{task}.csv", newline="")))
    return [r["prompt"] for r in rows[start:start + count]]


class Encoder:
    def __init__(self, name):
        if name == "stories260K":
            self.path = SHARED / "fixtures/stories260K/stories260K.bin"
            tok = qinterp.load_tokenizer(SHARED / "fixtures/stories260K/tok512.bin")
            self.encode = lambda texts: qinterp.encode_batch(tok, texts)
            self.max_len = 512
        elif name == "smollm2":
            self.path = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
            tok = qinterp.load_tokenizer(self.path)  # the GGUF's own vocabulary (ids equal transformers')

            def enc(texts):  # the first 256 tokens of each prompt, left-padded with EOS
                rows = [r[:256] for r in tok.encode_many(texts)]
                width = max(map(len, rows))
                ids = torch.tensor([[tok.eos_id] * (width - len(r)) + r for r in rows])
                mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
                return ids, mask
            self.encode = enc
            self.max_len = 256
        else:
            raise SystemExit(f"unknown model {name} (stories260K, smollm2)")


def perplexity(model, enc, texts, batch):
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            ids, mask = enc.encode(texts[i:i + batch])
            ids, mask = ids[:, -enc.max_len:], mask[:, -enc.max_len:]
            logp = torch.log_softmax(model.forward(ids, mask)[:, :-1].double(), -1)
            tgt, keep = qinterp.analysis.next_token_targets(ids, mask)
            nll -= logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[keep].sum().item()
            count += int(keep.sum())
    return nll / count, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="stories260K")
    ap.add_argument("--rows", type=int, default=250, help="prompts per CSV")
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--compute", default=None, help="override the specs' compute dtype (e.g. fp32 on a CPU)")
    ap.add_argument("--calib", type=int, default=128, help="GPTQ calibration windows")
    ap.add_argument("--seqlen", type=int, default=256, help="tokens per GPTQ calibration window")
    ap.add_argument("--out", default=None, help="CSV to write (default results/quant_perplexity_<model>.csv)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    enc = Encoder(a.model)
    # sorted by length so that a batch pads little (the pooled NLL does not depend on the order)
    texts = sorted((t for task in TASKS for t in prompts(task, 0, a.rows)), key=len)
    seqlen = min(a.seqlen, enc.max_len)
    # calibration text: the rows after the evaluated ones, from all four tasks, interleaved
    pools = [prompts(task, a.rows, a.calib * seqlen // 40 + 1) for task in TASKS]
    calib_texts = [t for group in zip(*pools) for t in group]
    cids, cmask = enc.encode(calib_texts)
    print(f"[ppl] {a.model}: {len(texts)} prompts from {', '.join(TASKS)}", file=sys.stderr)
    out_rows = []
    for spec in a.specs.split(","):
        s = spec
        if a.compute and spec not in ("fp32", "fp16", "bf16"):
            s = spec + (",compute=" if ":" in spec else ":compute=") + a.compute
        if s.startswith("gptq"):
            s += (",calib=" if ":" in s else ":calib=") + f"{a.calib},seqlen={seqlen}"
        t0 = time.time()
        calib = None
        if s.startswith("gptq"):
            flat = cids[cmask]
            n = min(a.calib, flat.numel() // seqlen)
            calib = flat[: n * seqlen].view(n, seqlen)
        model = qinterp.load_model(enc.path, quant=s, device=a.device, calibration=calib)
        t1 = time.time()
        nll, count = perplexity(model, enc, texts, a.batch)
        t2 = time.time()
        row = {"model": a.model, "spec": model.quant if model.quant != "fp32" else "fp32", "tokens": count,
               "nll": round(nll, 5), "ppl": round(math.exp(nll), 3), "bytes": model.parameter_bytes(),
               "load_s": round(t1 - t0, 1), "eval_s": round(t2 - t1, 1)}
        out_rows.append(row)
        print(f"[ppl] {spec:6s} ppl {row['ppl']:9.3f}  nll {nll:.4f}  {row['bytes'] / 2**20:7.2f} MiB  "
              f"load {row['load_s']}s eval {row['eval_s']}s", file=sys.stderr)
    res = ROOT / "results"
    res.mkdir(exist_ok=True)
    path = pathlib.Path(a.out) if a.out else res / f"quant_perplexity_{a.model}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

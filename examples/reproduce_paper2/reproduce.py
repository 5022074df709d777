"""Paper 2's perplexity and efficiency tables (Jin et al.; ../../../shared/PROTOCOLS.md §2) for the
models this project has, over every precision: WikiText-2 perplexity under GPTQ's protocol and
decoding speed / memory at batch 1. Writes results/paper2/<model>.md and .csv.

    PYTHONPATH=build/python python examples/reproduce_paper2/reproduce.py
    PYTHONPATH=build/python python examples/reproduce_paper2/reproduce.py --model smollm2 --max-windows 0

--max-windows 0 scores the whole test split (SmolLM2 on 2 CPU threads: about 15 minutes per
precision); the default scores the first windows, named in the table.
"""
import argparse
import csv
import os
import pathlib
import sys

import qinterp

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
PRECISIONS = ["fp32", "bf16", "int8", "nf4", "fp4", "gptq8", "gptq4", "gptq3", "gptq2", "rtn4"]
PAPER_7B = {"bf16": (8.67, 15.14, 37.67), "int8": (8.68, 9.23, 7.19), "gptq8": (8.68, 10.91, 13.57),
            "gptq4": (9.04, 7.83, 37.43), "gptq3": (11.17, 7.12, 8.21), "gptq2": (123030, 6.26, 19.36)}


def model_files(name):
    if name == "stories260K":
        return SHARED / "fixtures/stories260K/stories260K.bin", SHARED / "fixtures/stories260K/tok512.bin"
    if name == "smollm2":
        p = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
        return p, p
    if name == "qwen2.5":
        p = MODELS / "qwen2.5-coder-0.5b-instruct.gguf"
        return p, p
    raise SystemExit(f"unknown model {name} (stories260K, smollm2, qwen2.5)")


def calibration(tok, seqlen, source, scored_tokens):
    """GPTQ's calibration: 128 random windows (seed 0) of `source`.

    boolq: the paper-1 BoolQ prompts, one after another (the default: the paper calibrates on
    Alpaca, text of another kind than the WikiText-2 it scores, and WikiText-2's training split is
    not available offline). wikitext2-unscored: the test split's tokens after the scored windows,
    text of the scored kind that no scored window contains."""
    import torch
    if source == "boolq":
        rows = list(csv.DictReader(open(SHARED / "datasets/paper1/boolq.csv", newline="")))
        ids = [t for r in rows for t in tok.encode(r["prompt"])]
    elif source == "wikitext2-unscored":
        if scored_tokens is None:
            raise SystemExit("--calib wikitext2-unscored needs --max-windows > 0: the whole split is scored")
        raw = open(SHARED / "datasets/wikitext2/wiki.test.raw", encoding="utf-8", newline="").read()
        ids = tok.encode(qinterp._C.wikitext_joined(raw))[scored_tokens:]
    else:
        raise SystemExit(f"unknown --calib {source} (boolq, wikitext2-unscored)")
    return qinterp.random_calibration_windows(torch.tensor(ids), 128, min(seqlen, len(ids) - 1), 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append",
                    help="stories260K, smollm2, qwen2.5 (default the first two; Qwen2.5 takes about 10x SmolLM2's time)")
    ap.add_argument("--quant", nargs="+", default=PRECISIONS)
    ap.add_argument("--max-windows", type=int, default=8, help="0 = the whole test split")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--calib", default="boolq", help="GPTQ's calibration text: boolq (default) or wikitext2-unscored")
    ap.add_argument("--out", default=str(ROOT / "results/paper2"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in a.model or ["stories260K", "smollm2"]:
        path, tok_path = model_files(name)
        tok = qinterp.load_tokenizer(tok_path)
        rows = []
        ctx = qinterp.load_model(path).config["max_seq_len"]
        scored = a.max_windows * min(2048, ctx) if a.max_windows else None
        calib = None  # the same windows for every GPTQ precision of this model, drawn once
        for prec in a.quant:
            spec = qinterp._C.spec_for_device(prec, "cpu") if prec not in ("fp32", "fp16", "bf16") else prec
            if prec.startswith("gptq") and calib is None:
                calib = calibration(tok, 256, a.calib, scored)
            m = qinterp.load_model(path, quant=spec, calibration=calib if prec.startswith("gptq") else None)
            p = qinterp.perplexity(m, tok, "wikitext2", max_windows=a.max_windows or None)
            prompt = min(256, ctx // 2)
            s = qinterp.speed(m, prompt_tokens=prompt, new_tokens=min(a.new_tokens, ctx - prompt))
            rows.append({"precision": prec, "ppl": p["ppl"], "windows": p["windows"], "seqlen": p["seqlen"],
                         "weights_MiB": s["weight_bytes"] / 2**20, "peak_rss_MiB": s["peak_host_bytes"] / 2**20,
                         "prefill_s": s["prefill_seconds"], "decode_tokens_per_s": s["decode_tokens_per_second"]})
            print(f"[{name}] {prec}: PPL {p['ppl']:.3f} ({p['windows']} x {p['seqlen']}), "
                  f"{s['decode_tokens_per_second']:.1f} tokens/s, {s['weight_bytes'] / 2**20:.1f} MiB", flush=True)
            del m
        with open(os.path.join(a.out, f"{name}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(os.path.join(a.out, f"{name}.md"), "w") as f:
            f.write(f"# {name}: WikiText-2 perplexity (protocol gptq, {rows[0]['windows']} windows of "
                    f"{rows[0]['seqlen']}) and decoding at batch 1 on the CPU\n\n"
                    f"GPTQ calibration: 128 random windows (seed 0) of {a.calib}.\n\n")
            f.write("| precision | PPL | weights MiB | peak RSS MiB | prefill s | decode tokens/s | Qwen-7B (paper): PPL / GB / tokens/s |\n")
            f.write("|---|---:|---:|---:|---:|---:|---|\n")
            for r in rows:
                pp = PAPER_7B.get(r["precision"])
                f.write(f"| {r['precision']} | {r['ppl']:.3f} | {r['weights_MiB']:.1f} | {r['peak_rss_MiB']:.0f} | "
                        f"{r['prefill_s']:.3f} | {r['decode_tokens_per_s']:.1f} | "
                        f"{'' if not pp else f'{pp[0]} / {pp[1]} / {pp[2]}'} |\n")
        print(f"[{name}] wrote {a.out}/{name}.md and .csv")


if __name__ == "__main__":
    sys.exit(main())

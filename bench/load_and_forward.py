"""Load time and forward throughput of qinterp against Hugging Face transformers on the same
model file and the same tokens, in one run. Prints the ratios.

    PYTHONPATH=build/python ~/.cache/qinterp/venv/bin/python bench/load_and_forward.py \
        [--model PATH.gguf ...] [--batch 8] [--seq 64] [--reps 3] [--threads N]

Without --model: every real model set-up fetched (SmolLM2, Qwen2.5-Coder-0.5B, gemma-3-270m).
"""
import argparse
import os
import pathlib
import time

import torch

import qinterp

MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
DEFAULT = [MODELS / n for n in ("SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-coder-0.5b-instruct.gguf",
                                "gemma-3-270m-q4_k_m.gguf")]


def timed(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", nargs="+", default=[str(p) for p in DEFAULT if p.exists()])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for m in a.model:
        bench(pathlib.Path(m), a)


def bench(path, a):
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    ours = qinterp.load_model(path)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    t_hf = time.perf_counter() - t0

    ids = torch.randint(0, ours.config["vocab_size"], (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        f_ours = timed(lambda: ours.forward(ids), a.reps)
        f_hf = timed(lambda: hf(ids).logits, a.reps)
        err = (ours.forward(ids) - hf(ids).logits).abs().max().item()
    n = a.batch * a.seq
    print(f"model {path.name}, {a.threads} threads, batch {a.batch} x seq {a.seq}")
    print(f"load:    qinterp {t_ours:7.2f} s   transformers {t_hf:7.2f} s   ratio {t_hf / t_ours:6.1f}x")
    print(f"forward: qinterp {n / f_ours:7.0f} tok/s transformers {n / f_hf:7.0f} tok/s ratio {f_hf / f_ours:6.2f}x")
    print(f"max |logit difference| on these tokens: {err:.2e}")


if __name__ == "__main__":
    main()

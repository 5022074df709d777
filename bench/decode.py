"""Decoding speed at batch 1: each qinterp precision against qinterp fp32, and qinterp fp32 against
transformers on the same weights, in one run (same threads, same prompt length, EOS ignored).

    PYTHONPATH=build/python python bench/decode.py                       # SmolLM2 GGUF, 2 threads
    PYTHONPATH=build/python python bench/decode.py --model ../shared/fixtures/stories260K/stories260K.bin --no-hf
    PYTHONPATH=build/python python bench/decode.py --rounds 5 --quant fp32 nf4 nf4:decode=q8   # interleaved
    ... --dense-head        # the LM head read dense, not from its exact Q8_0 blocks (Model.set_compact_head)

llama.cpp: pass --llama-python PATH, a Python with llama-cpp-python installed (a separate
environment: it builds llama.cpp from source, about ten minutes here, never in make test or CI);
the same GGUF is then decoded by llama.cpp with the same thread count. Measure on an idle machine:
llama.cpp's threads spin while they wait, so a loaded machine collapses its figures.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import time

import torch

import qinterp

MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))

LLAMA = """
import sys, time
from llama_cpp import Llama
path, threads, prompt, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=prompt + new + 8, n_threads=threads, n_batch=prompt, verbose=False)
ids = [(i * 7919) % 1000 + 100 for i in range(prompt)]
def run(n):
    llm.reset()
    llm.eval(ids)
    t0 = time.perf_counter()
    for _ in range(n):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    return time.perf_counter() - t0
run(8)
print(new / run(new))
"""


def hf_decode(path, prompt, new):
    from transformers import AutoModelForCausalLM
    p = pathlib.Path(path)
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, hf.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=new + 1, min_new_tokens=new + 1, **kw)
        total = time.perf_counter() - t0
    return new / (total - prefill)


def load(a, spec, calib):
    s = qinterp._C.spec_for_device(spec, "cpu") if spec not in ("fp32", "fp16", "bf16") else spec
    m = qinterp.load_model(a.model, quant=s, calibration=calib) if spec.startswith("gptq") else \
        qinterp.load_model(a.model, quant=s)
    if a.dense_head:
        m.set_compact_head(False)
    return m


def rounds(a):
    """Every precision loaded once, then measured in turn a.rounds times."""
    import statistics
    if "fp32" not in a.quant:
        a.quant = ["fp32"] + a.quant
    calib = torch.randint(0, 1000, (16, 128), generator=torch.Generator().manual_seed(0))
    models = {spec: load(a, spec, calib) for spec in dict.fromkeys(a.quant)}
    tps = {spec: [] for spec in models}
    lc = []
    for i in range(a.rounds):
        for spec, m in models.items():
            tps[spec].append(qinterp.speed(m, a.prompt_tokens, a.new_tokens)["decode_tokens_per_second"])
        if a.llama_python:  # llama.cpp in each round too, so that its ratios pair rows measured close in time
            lc.append(llama_decode(a))
        print(f"round {i + 1}: " + "  ".join(f"{spec} {tps[spec][-1]:.1f}" for spec in models) +
              (f"  llama.cpp {lc[-1]:.1f}" if lc else ""), flush=True)
    print(f"\ndecoding tokens/s over {a.rounds} rounds (median, min-max) and the median of each round's ratio "
          "against that round's fp32" + (" and llama.cpp:" if lc else ":"))
    for spec in models:
        ratio = statistics.median(t / f for t, f in zip(tps[spec], tps["fp32"]))
        vs_lc = f"  {statistics.median(t / l for t, l in zip(tps[spec], lc)):.2f}x of llama.cpp" if lc else ""
        print(f"  {spec:22s} {statistics.median(tps[spec]):8.2f}  ({min(tps[spec]):.2f}-{max(tps[spec]):.2f})  "
              f"{ratio:.2f}x{vs_lc}")
    if lc:
        print(f"  {'llama.cpp':22s} {statistics.median(lc):8.2f}  ({min(lc):.2f}-{max(lc):.2f})")


def llama_decode(a):
    out = subprocess.run([a.llama_python, "-c", LLAMA, a.model, str(a.threads), str(a.prompt_tokens),
                          str(a.new_tokens)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit("llama.cpp failed: " + out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--quant", nargs="+", default=["fp32", "int8", "nf4", "nf4:compute=fp16", "gptq4", "rtn4"])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--llama-python")
    ap.add_argument("--dense-head", action="store_true",
                    help="decode with the dense LM head instead of its exact Q8_0 blocks (for comparison)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="load every precision once, then measure them in turn this many times: medians, and "
                         "ratios against the fp32 measured in the same round (for a noisy machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.rounds > 1:
        return rounds(a)
    rows = []
    # speed does not depend on which windows calibrated GPTQ's weights
    calib = torch.randint(0, 1000, (16, 128), generator=torch.Generator().manual_seed(0))
    for spec in a.quant:
        m = load(a, spec, calib)
        r = qinterp.speed(m, a.prompt_tokens, a.new_tokens)
        rows.append((spec, r))
        print(f"{spec:22s} weights {r['weight_bytes'] / 2**20:8.1f} MiB  prefill {r['prefill_seconds']:7.3f} s  "
              f"decode {r['decode_tokens_per_second']:8.2f} tokens/s", flush=True)
        del m
    base = next((r for spec, r in rows if spec == "fp32"), None)
    if base:
        # Against the latest fp32 row before each row (the first fp32 row for those before it): listing
        # fp32 between the others, e.g. --quant fp32 nf4 fp32 nf4, pairs rows measured close in time.
        print("\nratio of decoding tokens/s against qinterp fp32 (same run, the nearest fp32 row before):")
        ref = base
        for spec, r in rows:
            if spec == "fp32":
                ref = r
            print(f"  {spec:22s} {r['decode_tokens_per_second'] / ref['decode_tokens_per_second']:.2f}x")
    if not a.no_hf and base:
        hf = hf_decode(a.model, a.prompt_tokens, a.new_tokens)
        print(f"\ntransformers fp32 (same GGUF, {a.threads} threads): {hf:.2f} tokens/s; "
              f"qinterp fp32 / transformers = {base['decode_tokens_per_second'] / hf:.2f}x")
        for spec, r in rows:
            print(f"  qinterp {spec:22s} / transformers fp32 = {r['decode_tokens_per_second'] / hf:.2f}x")
    if a.llama_python:
        lc = llama_decode(a)
        print(f"\nllama.cpp on the GGUF as stored: {lc:.2f} tokens/s")
        for spec, r in rows:
            print(f"  qinterp {spec:22s} / llama.cpp = {r['decode_tokens_per_second'] / lc:.2f}x")
    else:
        print("\nllama.cpp: not measured (pass --llama-python, see the docstring)")


if __name__ == "__main__":
    sys.exit(main())

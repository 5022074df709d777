"""Prefill time per precision and prompt length on the CPU (qinterp.speed's prefill_seconds, best of
`--repeats`), and RTN/GPTQ's one-pass CPU dequantization against the tensor expression it replaced
(written here with the same torch operations, so the values are checked equal), in one run.

    PYTHONPATH=build/python python bench/prefill.py [--model PATH] [--quant fp32 int8 nf4 gptq4]
"""
import argparse
import os
import pathlib
import time

import torch

import qinterp
import qinterp.quant as Q

MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))


def dequant_ab(repeats=9):
    w = torch.randn(4864, 896, generator=torch.Generator().manual_seed(0))  # Qwen2.5-0.5B's MLP shape
    for spec in ["rtn4:compute=fp32", "rtn8:group=0,compute=fp32"]:
        qt = Q.quantize(w, spec)
        p = qt.parts()
        data, scale, zero, gi = p["qdata"], p["scale"], p["zero"], p["g_idx"].long()

        def expression():
            codes = data
            if spec.startswith("rtn4"):
                codes = torch.stack([data >> 4, data & 15], 2).reshape(data.size(0), -1)[:, : w.size(1)]
            return scale.index_select(1, gi) * (codes.float() - zero.index_select(1, gi))

        assert torch.equal(expression(), Q.dequantize(qt)), spec
        t = {"expression": [], "one pass": []}
        for _ in range(repeats):
            for k, f in (("expression", expression), ("one pass", lambda: Q.dequantize(qt))):
                t0 = time.perf_counter()
                f()
                t[k].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in t.items()}
        print(f"dequantize {spec} [4864, 896]: tensor expression {med['expression']:.1f} ms, "
              f"one pass {med['one pass']:.1f} ms, {med['expression'] / med['one pass']:.1f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--quant", nargs="+", default=["fp32", "int8", "nf4", "gptq4"])
    ap.add_argument("--prompts", nargs="+", type=int, default=[4, 5, 8, 16, 32, 64, 256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dequant_ab()
    calib = torch.randint(0, 1000, (16, 128), generator=torch.Generator().manual_seed(0))
    print(f"prefill ms, best of {a.repeats}: " + " ".join(str(p) for p in a.prompts) + " tokens")
    for spec in a.quant:
        s = spec if spec in ("fp32", "fp16", "bf16") else qinterp._C.spec_for_device(spec, "cpu")
        m = qinterp.load_model(a.model, quant=s, calibration=calib if spec.startswith("gptq") else None)
        qinterp.speed(m, 16, 4)  # warm-up
        ms = [min(qinterp.speed(m, p, 2)["prefill_seconds"] for _ in range(a.repeats)) * 1e3 for p in a.prompts]
        print(f"{spec:>8}: " + " ".join(f"{v:.0f}" for v in ms), flush=True)
        del m


if __name__ == "__main__":
    main()

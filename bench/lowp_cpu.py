"""fp16 and bf16 matrix products on the CPU, one run: qinterp's (quant::wide_linear, a float32
product of the widened operands rounded once) against the peers' on the same operands and threads:
  - dense fp16 / bf16 `[rows, in] x [out, in]ᵀ`: qinterp.quant.wide_linear against torch's
    F.linear in that dtype (what transformers runs for an fp16/bf16 model on the CPU);
  - an NF4 layer with fp16 compute (the papers' 4-bit): qinterp's layer product against
    bitsandbytes' matmul_4bit (which dequantizes and calls torch's fp16 product on the CPU).
Shapes are SmolLM2-135M's MLP and LM head. For each: median ms per call, the ratio, and how many
outputs differ from the peer's and by at most how many ulps of the largest output (both accumulate
in float32 and round once, in different orders).

    PYTHONPATH=build/python python bench/lowp_cpu.py [--threads 2] [--repeat 5]
"""
import argparse
import statistics
import time

import torch

import qinterp.quant as Q


def ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def ulps_of_max(a, b, dtype):
    """The largest |a - b| in ulps of the dtype at the output's largest magnitude (where the outputs
    cancel, both sides' float32 accumulation errors are many ulps of the small result)."""
    mant = 10 if dtype == torch.float16 else 7
    top = torch.floor(torch.log2(a.double().abs().max()))
    return ((a.double() - b.double()).abs().max() / torch.exp2(top - mant)).item()


def report(name, ours_fn, peer_fn, peer, repeat, dtype):
    ours, theirs = ours_fn(), peer_fn()
    t_ours, t_peer = ms(ours_fn, repeat), ms(peer_fn, repeat)
    diff = (ours != theirs).sum().item()
    print(f"{name:44s} qinterp {t_ours:9.2f} ms  {peer} {t_peer:9.2f} ms  {t_peer / t_ours:5.2f}x   "
          f"{diff} of {ours.numel()} outputs differ, by at most {ulps_of_max(ours, theirs, dtype):.2f} ulp "
          "of the largest", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"{a.threads} threads, torch {torch.__version__}")
    for dtype in (torch.float16, torch.bfloat16):
        for rows, out, inp in ((16, 1536, 576), (100, 1536, 576), (1600, 1536, 576), (1600, 576, 1536),
                               (1600, 49152, 576)):
            x = torch.randn(rows, inp, generator=g).to(dtype)
            w = (torch.randn(out, inp, generator=g) * 0.05).to(dtype)
            report(f"dense {str(dtype)[6:]} [{rows}, {inp}] x [{out}, {inp}]T",
                   lambda: Q.wide_linear(x, w), lambda: torch.nn.functional.linear(x, w), "torch", a.repeat, dtype)
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    for rows, out, inp in ((100, 1536, 576), (1600, 1536, 576), (1600, 576, 1536)):
        w = (torch.randn(out, inp, generator=g) * 0.05).half()
        x = torch.randn(rows, inp, generator=g).half()
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        qt = Q.quantize(w, "nf4")
        report(f"nf4 fp16 compute [{rows}, {inp}] x [{out}, {inp}]T", lambda: Q.linear(x, qt),
               lambda: bnb.matmul_4bit(x, packed.t(), state), "bitsandbytes", a.repeat, torch.float16)


if __name__ == "__main__":
    main()

"""Decoding-step matrix-vector products on the CPU, one run: every format's fused kernel and qinterp's
dense fp32 kernel against torch's own dense product (at::linear, MKL sgemv) on the same shapes and
threads. The weights rotate over a set larger than the last-level cache, as a decoder reads them.

    PYTHONPATH=build/python python bench/gemv_cpu.py [--rows 1536 --cols 576 --threads 2]
"""
import argparse
import statistics
import time

import torch

import qinterp.quant as Q


def per_call_us(fn, weights, x, repeat):
    for w in weights[:4]:
        fn(x, w)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for w in weights:
            fn(x, w)
        times.append((time.perf_counter() - t) / len(weights))
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1536)
    ap.add_argument("--cols", type=int, default=576)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set-mib", type=int, default=256, help="dense fp32 bytes rotated over (beyond the caches)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    n = max(4, a.set_mib * 2**20 // (a.rows * a.cols * 4))
    dense = [torch.randn(a.rows, a.cols, generator=g) for _ in range(n)]
    x = torch.randn(1, a.cols, generator=g)
    base = per_call_us(torch.nn.functional.linear, dense, x, a.repeat)
    print(f"[{a.rows}, {a.cols}] x one row, {a.threads} threads, {n} weights rotated")
    print(f"{'kernel':28s} {'us/call':>9s} {'Gweights/s':>11s} {'vs torch fp32':>14s}")
    print(f"{'torch fp32 (at::linear)':28s} {base:9.1f} {a.rows * a.cols / base / 1e3:11.2f} {1.0:13.2f}x")
    rows = [("qinterp fp32 (gemv_dense)", Q.gemv_dense, dense, x)]
    for spec, fn in [("nf4", Q.gemv_4bit), ("nf4:decode=q8", Q.gemv_4bit), ("fp4", Q.gemv_4bit),
                     ("rtn4", Q.gemv_grouped), ("rtn4:decode=q8", Q.gemv_grouped), ("rtn8", Q.gemv_grouped),
                     ("rtn3", Q.gemv_grouped), ("rtn3:decode=q8", Q.gemv_grouped)]:
        rows.append((f"qinterp {spec}", fn, [Q.quantize(w, spec) for w in dense], x))
    # RTN/GPTQ nibbles in groups of 64k columns take the 64-code kernel; an x holding a value it cannot
    # scale exactly (0 < |x| < 2^-114) takes the first kernel on the same weights: the A/B of the two
    x_first = x.clone()
    x_first[0, 1] = 1e-36
    rows.append(("qinterp rtn4, first kernel", Q.gemv_grouped, rows[4][2], x_first))
    for name, fn, ws, xx in rows:
        us = per_call_us(fn, ws, xx, a.repeat)
        print(f"{name:28s} {us:9.1f} {a.rows * a.cols / us / 1e3:11.2f} {base / us:13.2f}x", flush=True)


if __name__ == "__main__":
    main()

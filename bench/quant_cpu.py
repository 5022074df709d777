"""NF4 quantize / dequantize throughput on the CPU: qinterp vs bitsandbytes' CPU path, same tensors,
same threads, one run. Prints a table and the ratios (docs/performance.md records them).

    PYTHONPATH=build/python python bench/quant_cpu.py [--rows 4096 --cols 11008 --repeat 5]
"""
import argparse
import statistics
import time

import torch

import qinterp.quant as Q
import bitsandbytes.functional as F


def best(fn, repeat):
    fn()  # warm-up (bitsandbytes compiles its dequantize with torch.compile on first use)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    n = a.rows * a.cols
    print(f"weight {a.rows}x{a.cols} ({n / 1e6:.1f} M values), torch threads {torch.get_num_threads()}")
    print(f"{'case':40s} {'qinterp ms':>11s} {'bnb ms':>9s} {'speedup':>8s}")
    for dtype in (torch.float16, torch.float32):
        w = (torch.randn(a.rows, a.cols) * 0.02).to(dtype)
        for dq in (True, False):
            spec = f"nf4:block=64,double_quant={int(dq)}"
            ours = best(lambda: Q.quantize(w, spec), a.repeat)
            theirs = best(lambda: F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq), a.repeat)
            name = f"quantize {str(dtype)[6:]} double_quant={int(dq)}"
            print(f"{name:40s} {ours * 1e3:11.1f} {theirs * 1e3:9.1f} {theirs / ours:7.2f}x")
            qt = Q.quantize(w, spec)
            packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
            assert torch.equal(qt.parts()["qdata"], packed.view(-1))  # same work, same bytes
            ours = best(lambda: Q.dequantize(qt), a.repeat)
            theirs = best(lambda: F.dequantize_4bit(packed, state), a.repeat)
            name = f"dequantize -> {str(dtype)[6:]} double_quant={int(dq)}"
            print(f"{name:40s} {ours * 1e3:11.1f} {theirs * 1e3:9.1f} {theirs / ours:7.2f}x")


if __name__ == "__main__":
    main()

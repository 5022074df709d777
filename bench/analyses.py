"""Streaming analyses against the ways the paper's pipeline computes the same numbers, on the
same activations, in one run; prints the ratios.

1. Correlation histogram (10 bins of |r|, pairs i < j):
   peer = NeuroX's way: materialize the [tokens, neurons] float32 matrix, numpy.corrcoef on it,
          histogram of the upper triangle (row blocks, so that the histogram adds no copy);
   qinterp = Correlation.update on batches of 4096 tokens as they would come from the hooks
          (the matrix is never held), then result().
2. Dead neurons: peer = the authors' layout — every neuron's activations written to an HDF5
   group of its own (`{layer}/{neuron}/activations`, one row per example), then read back per
   neuron and tested with numpy (their analyze script, without its 31-process pool: this
   machine has 2 cores); qinterp = DeadNeurons.update on the same batches.

Each side runs in its own child process, so "peak memory" is that process's peak RSS; the
"work" column subtracts the RSS the process had before the analysis started (Python, torch
and, for the peer, nothing else) so that the import of torch does not hide the difference.

    python bench/analyses.py                 # the sizes of the issue (takes a few minutes)
    python bench/analyses.py --quick         # small sizes
    python bench/analyses.py --repeat 3      # best of 3 runs of each side (shared machines are noisy)
    python bench/analyses.py --only corr     # the correlation benchmark alone (or --only dead)
    python bench/analyses.py --device cuda   # qinterp's accumulators on a GPU (the batches are made on
                                             # the CPU, as numpy's are, and copied over inside the timing)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches(tokens, neurons, batch=4096):
    """Seeded activations with some correlated neurons, produced batch by batch."""
    import torch
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(neurons, 64, generator=g) * 0.5
    for s in range(0, tokens, batch):
        n = min(batch, tokens - s)
        z = torch.randn(n, 64, generator=g)
        x = torch.randn(n, neurons, generator=g)
        x.addmm_(z, mix.t())  # in place: the batch is the only [n, neurons] buffer, as a hook's would be
        yield torch.nn.functional.silu(x, inplace=True)


def stream(name, tokens, neurons):
    """qinterp's side: the accumulator fed batch by batch; seconds spent in update + result."""
    import torch
    sys.path.insert(0, os.environ["QINTERP_PY"])
    from qinterp import analysis as qa
    device = os.environ.get("QINTERP_BENCH_DEVICE", "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    acc, busy = getattr(qa, name)(), 0.0
    for b in batches(tokens, neurons):
        t0 = time.perf_counter()
        acc.update(b.to(device))
        sync()
        busy += time.perf_counter() - t0
    t0 = time.perf_counter()
    res = acc.result()
    return busy + time.perf_counter() - t0, res


def child(kind, side, tokens, neurons, tmp):
    import numpy as np
    import torch
    torch.set_num_threads(os.cpu_count())
    base = rss_mb()
    out = {}
    if kind == "corr" and side == "numpy":
        x = torch.cat(list(batches(tokens, neurons))).numpy()  # the materialized activations
        t0 = time.perf_counter()
        r = np.corrcoef(x.T)
        edges = np.linspace(0, 1, 11)
        hist = np.zeros(10, np.int64)
        for i0 in range(0, neurons, 256):  # upper triangle, a block of rows at a time
            blk = np.abs(r[i0:i0 + 256])
            for k in range(blk.shape[0]):
                hist += np.histogram(np.minimum(blk[k, i0 + k + 1:], 1.0), bins=edges)[0]
        out["seconds"] = time.perf_counter() - t0
        out["histogram"] = hist.tolist()
    elif kind == "corr":
        busy, res = stream("Correlation", tokens, neurons)
        out["seconds"] = busy
        out["histogram"] = res["histogram"].tolist()
    elif kind == "dead" and side == "authors":
        import h5py
        path = os.path.join(tmp, "authors.h5")
        t0 = time.perf_counter()
        per_example = 64  # tokens per example (a prompt)
        with h5py.File(path, "w") as f:
            for b in batches(tokens, neurons):
                a = b.numpy()
                for e0 in range(0, a.shape[0], per_example):
                    ex = a[e0:e0 + per_example]
                    for j in range(neurons):
                        g = f.require_group(f"layer/{j}")
                        if "activations" not in g:
                            g.create_dataset("activations", data=ex[:, j][None], maxshape=(None, per_example),
                                             chunks=(1, per_example))
                        else:
                            d = g["activations"]
                            d.resize(d.shape[0] + 1, axis=0)
                            d[-1] = ex[:, j]
        write = time.perf_counter() - t0
        dead = 0
        with h5py.File(path, "r") as f:
            for j in range(neurons):
                acts = np.concatenate(f[f"layer/{j}"]["activations"][()])
                dead += bool(np.all((acts > -0.1) & (acts < 0.1)))
        out["seconds"] = time.perf_counter() - t0
        out["write_seconds"] = write
        out["dead"] = dead
    else:
        busy, res = stream("DeadNeurons", tokens, neurons)
        out["seconds"] = busy
        out["dead"] = res["count"]
    out["peak_mb"] = peak_mb()
    out["work_mb"] = peak_mb() - base
    if side == "qinterp" and os.environ.get("QINTERP_BENCH_DEVICE", "cpu").startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def run(kind, side, tokens, neurons, repeat=1):
    """The fastest of `repeat` runs, each in a fresh child process."""
    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, __file__, "--child", kind, side, str(tokens), str(neurons), tmp],
                               capture_output=True, text=True, env=os.environ)
            if p.returncode:
                sys.exit(f"{kind}/{side} failed:\n{p.stderr}")
            out = json.loads(p.stdout.strip().splitlines()[-1])
        if best is None or out["seconds"] < best["seconds"]:
            best = out
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs of each side")
    ap.add_argument("--device", default="cpu", help="where qinterp's accumulators run (cpu, cuda)")
    ap.add_argument("--only", choices=["corr", "dead"], help="run one of the two benchmarks")
    ap.add_argument("--child", nargs=5)
    a = ap.parse_args()
    if a.child:
        kind, side, t, n, tmp = a.child
        return child(kind, side, int(t), int(n), tmp)
    os.environ.setdefault("QINTERP_PY", os.path.join(os.path.dirname(HERE), "build", "python"))
    os.environ["QINTERP_BENCH_DEVICE"] = a.device
    print(f"{os.cpu_count()} CPU threads; qinterp on {a.device}; best of {a.repeat}")
    corr_sizes = [(20000, 1536), (4000, 4096)] if a.quick else [(200000, 1536), (20000, 11008)]
    for t, n in corr_sizes if a.only != "dead" else []:
        ref, ours = run("corr", "numpy", t, n, a.repeat), run("corr", "qinterp", t, n, a.repeat)
        same = ref["histogram"] == ours["histogram"]
        diff = sum(abs(x - y) for x, y in zip(ref["histogram"], ours["histogram"]))
        print(f"correlation histogram, {t} tokens x {n} neurons: numpy corrcoef {ref['seconds']:.1f} s, "
              f"qinterp {ours['seconds']:.1f} s -> {ref['seconds'] / ours['seconds']:.1f}x faster; "
              f"peak RSS {ref['peak_mb']:.0f} vs {ours['peak_mb']:.0f} MB ({ref['peak_mb'] / ours['peak_mb']:.1f}x), "
              f"work memory {ref['work_mb']:.0f} vs {ours['work_mb']:.0f} MB "
              f"({ref['work_mb'] / max(ours['work_mb'], 1):.1f}x less)"
              + (f", qinterp's GPU peak {ours['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in ours else "")
              + "; histograms "
              f"{'identical' if same else f'differ by {diff} pairs'}", flush=True)
    dead_sizes = [(4096, 512)] if a.quick else [(8192, 1536)]
    for t, n in dead_sizes if a.only != "corr" else []:
        ref, ours = run("dead", "authors", t, n), run("dead", "qinterp", t, n, a.repeat)
        print(f"dead neurons, {t} tokens x {n} neurons: authors' per-neuron HDF5 {ref['seconds']:.1f} s "
              f"(writing {ref['write_seconds']:.1f} s), qinterp {ours['seconds']:.3f} s -> "
              f"{ref['seconds'] / ours['seconds']:.0f}x faster; dead {ref['dead']} vs {ours['dead']}", flush=True)


if __name__ == "__main__":
    main()

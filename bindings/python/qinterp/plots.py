"""The paper's figures from a run's HDF5 file (matplotlib):

  accuracy.png, confidence.png, ace.png   one panel per task, bars per model and precision
                                          (Figures 1-3 of Singh & Sajjad)
  correlation.png                         pairs per |r| bin from 0.3 up, the hooked layers pooled,
                                          one row per model and one column per precision (Figure 4)

    python -m qinterp.plots results/run.h5 results/figures/
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

__all__ = ["read_run", "draw_all"]


def read_run(path: str) -> Tuple[List[dict], Dict[Tuple[str, str, str], List[int]]]:
    """(rows of model/task/precision/accuracy/confidence/ece/ace, {(model, task, precision): pooled |r| histogram})."""
    from . import Error
    from .analysis import ResultStore
    rows, hist = [], {}
    with ResultStore(path, "r") as s:
        for model in s.list(""):
            ma = s.attrs(model)
            if "layers" not in ma:
                continue
            precs = [p for p in str(ma.get("precisions", "")).split(",") if p] or \
                [p for p in s.list(model) if not p.startswith("_")]
            for prec in precs:
                if not s.exists(f"{model}/{prec}"):
                    continue
                for task in s.list(f"{model}/{prec}"):
                    g = f"{model}/{prec}/{task}"
                    ta = s.attrs(g)
                    if "hooks" not in ta or "forward_done" not in ta:  # as the report: finished stages only
                        continue
                    if s.exists(g + "/calibration"):
                        a = s.attrs(g + "/calibration")
                        rows.append(dict(model=model, task=task, precision=prec, accuracy=a["accuracy"],
                                         confidence=a["confidence"], ece=a["ece"], ace=a["ace"]))
                    total = None
                    for h in str(ta["hooks"]).split(","):
                        if s.exists(f"{g}/{h}/correlation"):
                            v = s.read(f"{g}/{h}/correlation/histogram").tolist()
                            if total is not None and len(v) != len(total):
                                raise Error(f"{path}: '{g}/{h}/correlation/histogram' has {len(v)} bins where the "
                                            f"task's other layers have {len(total)}; the file is damaged")
                            total = v if total is None else [x + y for x, y in zip(total, v)]
                    if total is not None:
                        hist[(model, task, prec)] = total
    return rows, hist


def _grouped(rows, key, ylabel, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    precs = list(dict.fromkeys(r["precision"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 3.2 * len(models) * len(precs) / 3) * len(tasks), 4),
                             sharey=True, squeeze=False)
    width = 0.8 / max(1, len(precs))
    cmap = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        for pi, prec in enumerate(precs):
            xs, ys = [], []
            for mi, model in enumerate(models):
                v = [r[key] for r in rows if r["task"] == task and r["model"] == model and r["precision"] == prec]
                if v:
                    xs.append(mi + (pi - (len(precs) - 1) / 2) * width)
                    ys.append(v[0])
            ax.bar(xs, ys, width=width, color=cmap(pi), label=prec)
        ax.set_title(task)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=10, fontsize=8)
        ax.grid(True, axis="y", linestyle="--", alpha=0.5)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(title="precision", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _correlation(hist, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(hist)
    models = list(dict.fromkeys((m, t) for m, t, _ in keys))
    precs = list(dict.fromkeys(p for _, _, p in keys))
    fig, axes = plt.subplots(len(models), len(precs), figsize=(3.6 * len(precs), 3.0 * len(models)), squeeze=False,
                             sharey="row")
    for r, (m, t) in enumerate(models):
        for c, p in enumerate(precs):
            ax = axes[r][c]
            h = hist.get((m, t, p))
            if h is None:
                ax.axis("off")
                continue
            n = len(h)
            lo = int(round(0.3 * n))
            labels = [f"{b / n:.1f}-{(b + 1) / n:.1f}" for b in range(lo, n)]
            bars = ax.bar(range(n - lo), h[lo:], color="#4477aa", edgecolor="black")
            for b in bars:
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{int(b.get_height()):,}", ha="center",
                        va="bottom", fontsize=6)
            ax.set_xticks(range(n - lo))
            ax.set_xticklabels(labels, rotation=45, fontsize=7)
            ax.set_title(f"{m} · {t} · {p}", fontsize=8)
        axes[r][0].set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_all(path: str, out_dir: str) -> List[str]:
    """Writes the four figures into out_dir; returns their paths."""
    rows, hist = read_run(path)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if rows:
        for key, label in (("accuracy", "Accuracy"), ("confidence", "Average confidence"), ("ace", "ACE")):
            p = os.path.join(out_dir, f"{key}.png")
            _grouped(rows, key, label, p)
            written.append(p)
    if hist:
        p = os.path.join(out_dir, "correlation.png")
        _correlation(hist, p)
        written.append(p)
    return written


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m qinterp.plots RUN.h5 OUT_DIR", file=sys.stderr)
        return 2
    try:
        for p in draw_all(argv[0], argv[1]):
            print(f"[plots] wrote {p}", file=sys.stderr)
    except Exception as e:  # one line, as the CLI does
        print(f"qinterp.plots: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

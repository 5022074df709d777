"""The paper-1 protocol on one or more models; see README.md beside this file.

    python examples/reproduce_paper1/reproduce.py [--model NAME=PATH ...] [--limit N] [--ig-limit N]
        [--mode clean|paper] [--device cpu|cuda] [--tasks boolq,toxicity,piqa,hellaswag] [--out DIR]
"""
import argparse
import os
import pathlib
import sys

import qinterp

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
DEFAULT = f"SmolLM2-135M-Instruct={MODELS / 'SmolLM2-135M-Instruct.Q4_1.gguf'}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="NAME=PATH (repeatable; default: SmolLM2)")
    ap.add_argument("--tasks", default="boolq,toxicity,piqa,hellaswag")
    ap.add_argument("--limit", type=int, default=0, help="examples per task (0 = all, as the paper)")
    ap.add_argument("--ig-limit", type=int, default=None, help="examples per task for IG (default: --limit)")
    ap.add_argument("--mode", default="paper", choices=["clean", "paper"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "results" / "paper1"))
    args = ap.parse_args()
    for spec in args.model or [DEFAULT]:
        if "=" not in spec:
            ap.error(f"--model takes NAME=PATH, got {spec!r}")
        name, path = spec.split("=", 1)
        out = pathlib.Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        print(f"[reproduce] {name}: {path}", flush=True)
        qinterp.run(path, name=name, quant=["fp32", "int8", "nf4"], task=args.tasks.split(","), out=out / "run.h5",
                    data=str(SHARED / "datasets/paper1"), limit=args.limit, ig_limit=args.ig_limit, mode=args.mode,
                    device=args.device, batch=args.batch)
        print(qinterp.report(out / "run.h5", out=str(out), latex=True, figures=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the paper-1 protocol (Singh & Sajjad; ../shared/PROTOCOLS.md §1) on
SmolLM2-135M-Instruct for fp32, int8 and nf4 — predictions and calibration, dead neurons,
activation statistics, neuron correlation, drift from fp32, and integrated-gradient salience on a
smaller slice — with progress, ending in tables and the paper's four figures under results/paper1/.

The paper scores the greedy next token on raw prompts. On SmolLM2 that says little for BoolQ
(the greedy token is <|im_end|> on most prompts), so the demo also runs BoolQ with the prediction
restricted to the label words and with the model's chat template, and prints those numbers beside.

Usage: python examples/demo.py [--limit N] [--ig-limit N] [--batch B] [--model PATH] [--out DIR]
Resumable: run it again and finished work is skipped (--restart to start over).
"""
import argparse
import os
import pathlib
import sys
import time

import qinterp

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = SHARED / "fixtures/stories260K/stories260K.bin"


def run_afresh_if_stale(path, calls, model, precs, common):
    """The runs of `calls` into `path`, resuming what an earlier demo left there. A file from a run
    with other settings (another --limit, an older qinterp) is moved aside, not mixed in: the
    demo then starts that file afresh and says where the old one went."""
    for attempt in (0, 1):
        try:
            for kw in calls:
                qinterp.run(model, quant=precs, out=path, **kw, **common)
            return
        except qinterp.Error as e:
            if attempt or "holds results of a run with other settings" not in str(e):
                raise
            old = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
            path.rename(old)
            print(f"[demo] {path.name} held results of a run with other settings: moved to {old.name}; "
                  "starting it afresh", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model path (default: SmolLM2 if cached, else stories260K)")
    ap.add_argument("--limit", type=int, default=0,
                    help="examples per task (default: 300 BoolQ, 80 Toxicity: its prompts are 4x longer)")
    ap.add_argument("--ig-limit", type=int, default=2, help="examples per task and precision for IG (2)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (16)")
    ap.add_argument("--tasks", default="boolq,toxicity", help="comma-separated tasks (boolq,toxicity)")
    ap.add_argument("--out", default=str(ROOT / "results" / "paper1"))
    ap.add_argument("--restart", action="store_true")
    args = ap.parse_args()
    if args.limit < 0:
        ap.error(f"--limit must be >= 0, got {args.limit}")
    for name in ("batch",):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.ig_limit < 0:
        ap.error(f"--ig-limit must be >= 0, got {args.ig_limit}")

    model = pathlib.Path(args.model) if args.model else (SMOLLM2 if SMOLLM2.exists() else STORIES)
    if not args.model and model != SMOLLM2:
        print(f"[demo] {SMOLLM2} not found (scripts/setup.sh fetches it); using stories260K", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    limits = {t: args.limit or {"boolq": 300, "toxicity": 80}.get(t, 80) for t in tasks}
    common = dict(data=str(SHARED / "datasets/paper1"), batch=args.batch, restart=args.restart)
    t0 = time.time()
    print(f"[demo] {model.name}: fp32, int8, nf4 on " + ", ".join(f"{t} ({n} examples)" for t, n in limits.items()) +
          f"; IG on {args.ig_limit} per task and precision", flush=True)
    precs = ["fp32", "int8", "nf4"]
    run_afresh_if_stale(out / "run.h5", [dict(task=t, ig_limit=args.ig_limit, limit=limits[t]) for t in tasks],
                        model, precs, common)
    extra = {}
    if "boolq" in tasks:
        print("[demo] BoolQ again: prediction over the label words, and with the chat template", flush=True)
        labels = dict(task=["boolq"], scoring="labels", analyses="predictions", limit=limits["boolq"])
        run_afresh_if_stale(out / "labels.h5", [labels], model, precs, common)
        extra["labels"] = out / "labels.h5"
        if qinterp._C.chat_template_of(str(model)):
            run_afresh_if_stale(out / "chat.h5", [dict(labels, chat="auto")], model, precs, common)
            extra["chat"] = out / "chat.h5"

    print(f"\n[demo] finished in {time.time() - t0:.0f} s\n")
    print(qinterp.report(out / "run.h5", out=str(out), figures=True))
    for name, path in extra.items():
        title = {"labels": "BoolQ scored over the label words (True/False; probabilities renormalised over them)",
                 "chat": "BoolQ in the model's chat template, scored over the label words"}[name]
        md = qinterp.report(path, out=str(out / name))
        table = md.split("### ", 2)[1].split("\n", 1)[1]
        print(f"### {title}\n{table}")
    print(f"[demo] tables, figures (accuracy.png, confidence.png, ace.png, correlation.png) and the HDF5 files are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

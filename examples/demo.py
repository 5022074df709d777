"""The foundation demo (until the paper-reproduction runner exists):

1. load the default real model — SmolLM2-135M-Instruct (GGUF Q4_1) when scripts/setup.sh has
   fetched it, else stories260K from ../shared;
2. generate from a prompt;
3. run a few hundred of the paper's BoolQ prompts (raw CSV text, as the paper's activation pass)
   through it with hooks on every layer's `blocks.L.mlp.hook_act`, and count per layer the MLP
   neurons whose activation stayed strictly inside (-0.1, 0.1) on every real token;
4. write results/demo_dead_neurons.csv and results/demo_dead_neurons.png.

Usage: python examples/demo.py [--prompts N] [--batch B] [--model PATH] [--out DIR]
"""
import argparse
import csv
import os
import pathlib
import sys
import time

import torch

import qinterp

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = SHARED / "fixtures/stories260K"


class QTokenizer:
    def __init__(self, path):
        self.t = qinterp.load_tokenizer(path)
        self.bos_id, self.eos_id = self.t.bos_id, self.t.eos_id

    def encode(self, text, bos=True):
        return self.t.encode(text, bos)

    def decode(self, ids):
        return self.t.decode(ids)


def batches(rows, tok, size, bos):
    for i in range(0, len(rows), size):
        yield (i, *qinterp.encode_batch(tok.t, rows[i:i + size], bos))  # left-padded (pad, else eos)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model path (default: SmolLM2 if cached, else stories260K)")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()

    if args.model:
        path = pathlib.Path(args.model)
    else:
        path = SMOLLM2 if SMOLLM2.exists() else STORIES / "stories260K.bin"
        if path != SMOLLM2:
            print(f"[demo] {SMOLLM2} not found (run scripts/setup.sh); using stories260K", flush=True)
    t0 = time.time()
    model = qinterp.load_model(path)
    cfg = model.config
    print(f"[demo] loaded {path.name} in {time.time() - t0:.1f}s: {cfg['num_layers']} layers, "
          f"{cfg['intermediate_size']} MLP neurons per layer, {model.num_parameters():,} parameters", flush=True)
    if cfg["format"] == "gguf":  # the GGUF's own vocabulary; SmolLM2 adds no BOS
        tok, bos, prompt = QTokenizer(path), False, "The three primary colors are"
    else:
        tok, bos, prompt = QTokenizer(path.parent / "tok512.bin"), True, "Once upon a time"

    t0 = time.time()
    ids = torch.tensor([tok.encode(prompt, bos)])
    out = model.generate(ids, max_new_tokens=40, temperature=0.0)
    print(f"[demo] generate ({time.time() - t0:.1f}s): {tok.decode(out[0, ids.shape[1]:].tolist())!r}\n"
          f"       after prompt {prompt!r}", flush=True)

    with open(SHARED / "datasets/paper1/boolq.csv", newline="") as f:
        rows = [r["prompt"] for _, r in zip(range(args.prompts), csv.DictReader(f))]
    L, width = cfg["num_layers"], cfg["intermediate_size"]
    alive = torch.zeros(L, width, dtype=torch.bool)  # some real token had |a| >= 0.1
    tokens = 0

    def make_hook(layer):
        def hook(act, mask):
            outside = (act.abs() >= 0.1) & mask.unsqueeze(-1)
            alive[layer] |= outside.flatten(0, 1).any(0).cpu()
        return hook

    handles = [model.hooks.add(f"blocks.{l}.mlp.hook_act", make_hook(l)) for l in range(L)]
    t0 = time.time()
    with torch.inference_mode():
        for i, ids, mask in batches(rows, tok, args.batch, bos):
            model.forward(ids, mask)
            tokens += int(mask.sum())
            done = min(i + args.batch, len(rows))
            print(f"\r[demo] BoolQ prompts {done}/{len(rows)}  tokens {tokens:,}  "
                  f"{tokens / (time.time() - t0):,.0f} tok/s", end="", flush=True)
    print(flush=True)
    for h in handles:
        model.hooks.remove(h)

    dead = (~alive).sum(1).tolist()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "demo_dead_neurons.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "layer", "dead", "total", "prompts", "tokens"])
        for l in range(L):
            w.writerow([path.name, l, dead[l], width, len(rows), tokens])
    print(f"\nDead MLP neurons (|act| < 0.1 on every real token) — {path.name}, {len(rows)} BoolQ prompts, "
          f"{tokens:,} tokens")
    print(f"{'layer':>5} {'dead':>6} / {'total':<6} {'%':>6}")
    for l in range(L):
        print(f"{l:>5} {dead[l]:>6} / {width:<6} {100 * dead[l] / width:>5.1f}%")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(range(L), dead, color="#4477aa")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"dead neurons (of {width})")
        ax.set_title(f"{path.name}: MLP neurons inside (-0.1, 0.1) on {len(rows)} BoolQ prompts")
        fig.tight_layout()
        fig.savefig(out_dir / "demo_dead_neurons.png", dpi=120)
        print(f"\n[demo] wrote {out_dir / 'demo_dead_neurons.csv'} and {out_dir / 'demo_dead_neurons.png'}")
    except ImportError:
        print(f"\n[demo] wrote {out_dir / 'demo_dead_neurons.csv'} (matplotlib missing: no figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Integrated gradients, the paper's setting: SmolLM2-135M-Instruct, layers 0 / 14 / 29
(blocks.L.mlp.hook_act), 50 Gauss-Legendre steps, the log-probability of the model's answer token
at the last position, baseline ids 0, on BoolQ prompts with the paper's template.

  qinterp  IntegratedGradients over the three hooks in one call (automatic step chunks)
  captum   LayerIntegratedGradients on transformers holding the same weights (gguf_file=), one call
           per layer with the default internal_batch_size (all 50 steps in one batch), as the
           authors' llm_attr runs it

Each side runs in its own process with the same thread count; the script prints seconds per
example, the ratio, and peak memory (resident set: the whole process, and above what the loaded
model takes).

    python bench/ig.py [--examples 3] [--threads 2] [--steps 50]
"""
import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS = (0, 14, 29)
TEMPLATE = "Respond with True or False only.\n{}\nAnswer:"

WORKER = r"""
import json, sys, time, torch
side, model_path, prompts, steps, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
layers = (0, 14, 29)
import qinterp
ours = qinterp.load_model(model_path)
tok = qinterp.load_tokenizer(model_path)
examples = []
for p in prompts:
    ids = torch.tensor([tok.encode(p)])
    examples.append((ids, int(ours.forward(ids)[0, -1].argmax())))
def rss():  # peak resident MiB of this process (VmHWM; ru_maxrss would include the parent's)
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))) / 1024
if side == "qinterp":
    from qinterp.analysis import IntegratedGradients
    ig = IntegratedGradients(ours, [f"blocks.{l}.mlp.hook_act" for l in layers], n_steps=steps)
    run = lambda ids, t: ig.attribute(ids, t)
    loaded = rss()
else:
    del ours
    from captum.attr import LayerIntegratedGradients
    from transformers import AutoModelForCausalLM
    import pathlib
    mp = pathlib.Path(model_path)
    hf = AutoModelForCausalLM.from_pretrained(str(mp.parent), gguf_file=mp.name, dtype=torch.float32).eval()
    loaded = rss()
    def run(ids, t):
        fwd = lambda inp: torch.log_softmax(hf(inp).logits[:, -1], -1)[:, t]
        return [LayerIntegratedGradients(fwd, hf.model.layers[l].mlp.act_fn).attribute(ids, n_steps=steps) for l in layers]
run(*examples[0])  # warm-up
t0 = time.perf_counter()
for ids, t in examples:
    run(ids, t)
dt = (time.perf_counter() - t0) / len(examples)
print(json.dumps({"seconds_per_example": dt, "peak_mib": rss(), "loaded_mib": loaded,
                  "tokens": [int(e[0].shape[1]) for e in examples]}))
"""


def run(side, prompts, steps, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT / "build/python")))
    out = subprocess.run([sys.executable, "-c", WORKER, side, str(SMOLLM2), json.dumps(prompts), str(steps), str(threads)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    with open(SHARED / "datasets/paper1/boolq.csv", newline="") as f:
        prompts = [TEMPLATE.format(r["prompt"]) for _, r in zip(range(args.examples), csv.DictReader(f))]
    q = run("qinterp", prompts, args.steps, args.threads)
    c = run("captum", prompts, args.steps, args.threads)
    print(f"SmolLM2-135M-Instruct, layers {LAYERS}, {args.steps} Gauss-Legendre steps, {args.threads} threads, "
          f"{args.examples} BoolQ prompts of {q['tokens']} tokens (after one warm-up example)")
    print(f"{'':10} {'s/example':>10} {'peak RSS MiB':>13} {'above model MiB':>16}")
    for name, r in (("qinterp", q), ("captum", c)):
        print(f"{name:10} {r['seconds_per_example']:>10.2f} {r['peak_mib']:>13.0f} {r['peak_mib'] - r['loaded_mib']:>16.0f}")
    print(f"speed-up: {c['seconds_per_example'] / q['seconds_per_example']:.2f}x; "
          f"memory above the model: {(c['peak_mib'] - c['loaded_mib']) / max(1, q['peak_mib'] - q['loaded_mib']):.1f}x less")


if __name__ == "__main__":
    main()

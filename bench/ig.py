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

    python bench/ig.py [--examples 3] [--threads 2] [--steps 50] [--device cuda --dtype fp16]
        [--random-init]

--random-init builds a model with SmolLM2-135M's configuration and random weights (seed 0) as a
Hugging Face checkpoint instead of reading the GGUF (the GPU machine cannot take the 98 MB file);
the prompts are then random token ids of BoolQ-prompt length. Both sides load the same checkpoint.
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
side, model_path, prompts, steps, threads, device, dtype = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
torch.set_num_threads(threads)
tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
layers = (0, 14, 29)
import qinterp
ours = qinterp.load_model(model_path, device=device, dtype=dtype)
if isinstance(prompts[0], str):
    tok = qinterp.load_tokenizer(model_path)
    id_lists = [tok.encode(p) for p in prompts]
else:
    id_lists = prompts
examples = []
for ids in id_lists:
    ids = torch.tensor([ids], device=device)
    examples.append((ids, int(ours.forward(ids)[0, -1].argmax())))
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
def peak():  # MiB: this process's resident peak (VmHWM; ru_maxrss would include the parent's), or the GPU's
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))) / 1024
if side == "qinterp":
    from qinterp.analysis import IntegratedGradients
    ig = IntegratedGradients(ours, [f"blocks.{l}.mlp.hook_act" for l in layers], n_steps=steps)
    run = lambda ids, t: ig.attribute(ids, t)
    loaded = peak()
else:
    del ours
    from captum.attr import LayerIntegratedGradients
    from transformers import AutoModelForCausalLM
    import pathlib
    mp = pathlib.Path(model_path)
    kw = dict(gguf_file=mp.name) if mp.suffix == ".gguf" else {}
    hf = AutoModelForCausalLM.from_pretrained(str(mp.parent if kw else mp), dtype=tdtype, **kw).to(device).eval()
    loaded = peak()
    def run(ids, t):
        fwd = lambda inp: torch.log_softmax(hf(inp).logits[:, -1], -1)[:, t]
        return [LayerIntegratedGradients(fwd, hf.model.layers[l].mlp.act_fn).attribute(ids, n_steps=steps) for l in layers]
run(*examples[0])  # warm-up
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
sync()
t0 = time.perf_counter()
for ids, t in examples:
    run(ids, t)
sync()
dt = (time.perf_counter() - t0) / len(examples)
print(json.dumps({"seconds_per_example": dt, "peak_mib": peak(), "loaded_mib": loaded,
                  "tokens": [int(e[0].shape[1]) for e in examples]}))
"""


def random_checkpoint():
    """SmolLM2-135M's configuration with random weights, as a Hugging Face directory."""
    import tempfile
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    d = pathlib.Path(tempfile.mkdtemp(prefix="qinterp_ig_bench_"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def run(side, model, prompts, steps, threads, device, dtype):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT / "build/python")))
    out = subprocess.run([sys.executable, "-c", WORKER, side, str(model), json.dumps(prompts), str(steps), str(threads),
                          device, dtype], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--random-init", action="store_true")
    args = ap.parse_args()
    with open(SHARED / "datasets/paper1/boolq.csv", newline="") as f:
        prompts = [TEMPLATE.format(r["prompt"]) for _, r in zip(range(args.examples + 1), csv.DictReader(f))]
    model = SMOLLM2
    if args.random_init:
        import random
        model = random_checkpoint()
        rng = random.Random(0)
        prompts = [[rng.randrange(49152) for _ in range(20 + 2 * i)] for i in range(args.examples + 1)]
    q = run("qinterp", model, prompts, args.steps, args.threads, args.device, args.dtype)
    c = run("captum", model, prompts, args.steps, args.threads, args.device, args.dtype)
    where = f"{args.threads} threads" if args.device == "cpu" else args.device
    print(f"SmolLM2-135M{' (random weights)' if args.random_init else '-Instruct'}, layers {LAYERS}, {args.steps} "
          f"Gauss-Legendre steps, {args.dtype}, {where}, {args.examples} prompts of {q['tokens'][1:]} tokens "
          f"(after one warm-up example)")
    mem = "GPU peak MiB" if args.device != "cpu" else "peak RSS MiB"
    print(f"{'':10} {'s/example':>10} {mem:>13} {'above model MiB':>16}")
    for name, r in (("qinterp", q), ("captum", c)):
        print(f"{name:10} {r['seconds_per_example']:>10.3f} {r['peak_mib']:>13.0f} {r['peak_mib'] - r['loaded_mib']:>16.0f}")
    print(f"speed-up: {c['seconds_per_example'] / q['seconds_per_example']:.2f}x; "
          f"memory above the model: {(c['peak_mib'] - c['loaded_mib']) / max(1, q['peak_mib'] - q['loaded_mib']):.1f}x less")


if __name__ == "__main__":
    main()

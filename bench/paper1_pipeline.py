"""The paper-1 pipeline as the authors run it against `qinterp run`, on the same slice of the same
model: numbers side by side and the wall time of each stage.

authors  a transcription of github.com/MSingh-CSE/LLM-Quantization-Effects (PROTOCOLS.md §1.5):
         transformers + bitsandbytes + captum + h5py + numpy, stage by stage as their scripts do it:
           0_softmax       batched greedy prediction, softmax confidence, substring scoring -> CSV
           ace / accuracy  from that CSV (their analysis_and_viz code)
           4_activations   activations of the hooked act_fn modules into HDF5, one group per neuron
           5_dead_neurons  every neuron's activations read back (a process pool), band (-0.1, 0.1)
           correlation     np.corrcoef over [tokens x neurons] per layer, NaN -> 0, |r| histogram
                           (NeuroX's way; the authors' own code for it is not released)
           1_attributions  LayerIntegratedGradients per layer and example (captum's llm_attr way)
           2/3 salient     the four scores, threshold 0.7, union over examples
qinterp  `qinterp run` with the same model, precisions, task slice and IG slice (--mode paper).

    python bench/paper1_pipeline.py [--task boolq|toxicity|piqa|hellaswag] [--limit 32] [--ig-limit 2]
                                    [--quant fp32,int8,nf4] [--threads 2]

Both run on the CPU with the same threads. The quantized runs of the authors' side use
bitsandbytes' CPU backend. Numbers that must agree: accuracy, dead counts (exactly), confidence and
ACE (to fp rounding), salient counts and correlation bins (close; IG and |r| near a bin edge differ
with the forward implementation's rounding).
"""
import argparse
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR = MODELS / "SmolLM2-135M-Instruct-hf-fp32"  # the GGUF's weights in HF layout (made once)
TEMPLATE = "Respond with True or False only.\n{}\nAnswer:"


def hf_copy():
    """transformers cannot quantize a model it loads from a GGUF: write its fp32 weights once."""
    if (HF_DIR / "model.safetensors").exists():
        return HF_DIR
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, dtype=torch.float32)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=MODELS))
    save_file({k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"},
              str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = m.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["tie_word_embeddings"] = True
    (tmp / "config.json").write_text(json.dumps(cfg))
    AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name).save_pretrained(str(tmp))
    tmp.rename(HF_DIR)
    return HF_DIR


# ---------------------------------------------------------------------------------------------
# The authors' side, one process per precision (their scripts are separate processes too).
AUTHORS = r'''
import csv, json, os, sys, time
from multiprocessing import Pool
import h5py, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from captum.attr import LayerIntegratedGradients

hf_dir, quant, prompts_json, golds_json, ig_limit, workdir, threads, task = sys.argv[1:9]
torch.set_num_threads(int(threads))
torch.manual_seed(42)
raw = json.loads(prompts_json); golds = json.loads(golds_json); ig_limit = int(ig_limit)
layers = [0, 14, 29]
names = [f"model.layers.{l}.mlp.act_fn" for l in layers]
times = {}

def load():
    kw = {}
    if quant == "int8":
        kw = dict(quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float16)
    elif quant == "nf4":
        kw = dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float16), dtype=torch.float16)
    m = AutoModelForCausalLM.from_pretrained(hf_dir, device_map="cpu", **kw)
    tok = AutoTokenizer.from_pretrained(hf_dir, padding_side="left")
    tok.pad_token = tok.eos_token
    m.config.pad_token_id = tok.eos_token_id
    return tok, m.eval()

tok, model = load()
prompts = ["Respond with True or False only.\n{}\nAnswer:".format(p) for p in raw] if task == "boolq" else list(raw)

# 0_softmax.py
t0 = time.time()
rows = []
for s in range(0, len(prompts), 32):
    inputs = tok(prompts[s:s + 32], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=1, return_dict_in_generate=True, output_logits=True,
                             do_sample=False)
    for i in range(len(prompts[s:s + 32])):
        probs = torch.nn.functional.softmax(out.logits[0][i], dim=-1)
        pid = torch.argmax(probs).item()
        pt = tok.decode(pid).strip()
        rows.append(dict(Predicted_Token=pt, Predicted_Token_Prob=probs[pid].item(),
                         Correct=golds[s + i].strip().lower() in pt.lower()))
times["predictions"] = time.time() - t0
# analysis_and_viz: accuracy, average confidence, ACE (sorted by confidence)
conf = [r["Predicted_Token_Prob"] for r in rows]; corr = [int(r["Correct"]) for r in rows]
order = sorted(range(len(rows)), key=lambda i: (conf[i], corr[i]))
n, per, ace, st = len(rows), len(rows) // 10, 0.0, 0
for b in range(10):
    en = st + per + (1 if b < n % 10 else 0)
    idx = order[st:en]
    if idx:
        ace += abs(np.mean([corr[i] for i in idx]) - np.mean([conf[i] for i in idx]))
    st = en
result = dict(accuracy=float(np.mean(corr)), confidence=float(np.mean(conf)), ace=ace / 10,
              predicted=[r["Predicted_Token"] for r in rows])

# 4_generate_activations_h5py.py (raw CSV prompts, batch 32, truncation, one group per neuron)
t0 = time.time()
acts = {}
hooks = [dict(model.named_modules())[nm].register_forward_hook(
    lambda mod, inp, out, nm=nm: acts.__setitem__(nm, out.detach().cpu())) for nm in names]
h5_path = os.path.join(workdir, f"all_activations_{quant}.h5")
sdt = h5py.string_dtype(encoding="utf-8")
with h5py.File(h5_path, "w") as h5:
    for s in range(0, len(raw), 32):
        inputs = tok(raw[s:s + 32], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            model(**inputs)
        mask = inputs["attention_mask"]
        toks = [tok.convert_ids_to_tokens(seq) for seq in inputs["input_ids"]]
        for nm in names:
            lo = acts[nm].numpy()
            g = h5.require_group(nm)
            for j in range(lo.shape[2]):
                ng = g.require_group(str(j))
                if "tokens" not in ng:
                    ng.create_dataset("tokens", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(sdt), chunks=True)
                    ng.create_dataset("activations", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(lo.dtype), chunks=True)
                td, ad = ng["tokens"], ng["activations"]
                for b in range(lo.shape[0]):
                    keep = mask[b].bool().numpy()
                    td.resize((td.shape[0] + 1,)); td[-1] = np.array([t for t, k in zip(toks[b], keep) if k], dtype=sdt)
                    ad.resize((ad.shape[0] + 1,)); ad[-1] = lo[b, keep, j]
for h in hooks:
    h.remove()
times["activations"] = time.time() - t0

# 5_dead_neurons.py (a process pool over neurons)
def is_dead(args):
    nm, j = args
    with h5py.File(h5_path, "r") as f:
        a = np.concatenate(f[f"{nm}/{j}/activations"][()])
    return bool(np.all((a > -0.1) & (a < 0.1)))
t0 = time.time()
width = model.config.intermediate_size
with Pool(int(threads)) as pool:
    dead = [sum(pool.map(is_dead, [(nm, j) for j in range(width)])) for nm in names]
times["dead"] = time.time() - t0
result["dead"] = dead

# correlation (NeuroX style: np.corrcoef on [tokens x neurons], NaN -> 0)
t0 = time.time()
hist = np.zeros(10, dtype=np.int64)
with h5py.File(h5_path, "r") as f:
    for nm in names:
        X = np.stack([np.concatenate(f[f"{nm}/{j}/activations"][()]).astype(np.float64) for j in range(width)], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num(np.abs(np.corrcoef(X, rowvar=False)))
        iu = np.triu_indices(width, 1)
        hist += np.histogram(r[iu], bins=10, range=(0, 1))[0]
times["correlation"] = time.time() - t0
result["correlation"] = hist.tolist()

# 1_generate_attributions.py (+ llm_attr): answer generated without special tokens, re-tokenized
t0 = time.time()
salient = {nm: set() for nm in names}
skipped = 0
for k in range(ig_limit):
    enc = tok([prompts[k]], add_special_tokens=False, return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=1, do_sample=False)
    text = tok.batch_decode(gen, skip_special_tokens=True)[0][len(prompts[k]):].strip()
    targets = tok.encode(text, add_special_tokens=False)
    if not targets:
        skipped += 1  # their script crashes here
        continue
    ids = tok.encode(prompts[k], return_tensors="pt")
    in_toks = tok.convert_ids_to_tokens(ids[0])
    for nm in names:
        per_target, seq = {}, []
        for ti, t in enumerate(targets):
            def fwd(inp, ti=ti, t=t):
                if ti:
                    inp = torch.cat([inp, torch.tensor([targets[:ti]]).expand(inp.size(0), -1)], 1)
                return torch.log_softmax(model(inp).logits[:, -1], 1)[..., t]
            attr = LayerIntegratedGradients(fwd, dict(model.named_modules())[nm]).attribute(ids).detach()[0].float()
            per_target[tok.decode(t)] = {tk: attr[i].tolist() for i, tk in enumerate(in_toks)}
            seq.append(attr[:len(in_toks)].sum(-1))
        seqd = {tk: v for v, tk in zip(torch.stack(seq).sum(0).tolist(), in_toks)}
        # 2_extract_important_neuron.py
        def above(a):
            a = np.abs(a); mx = np.max(a)
            if mx > 0: a = a / mx
            return [] if np.sum(a) <= 0 else np.where(a > 0.7)[0].tolist()
        best = max(seqd, key=lambda x: seqd[x])
        word = {}
        for ot in per_target:
            for it in per_target[ot]:
                arr = np.array(per_target[ot][it]); word.setdefault(it, np.zeros_like(arr)); word[it] += arr
        tot = np.zeros(word[best].shape)
        for it in word: tot += np.abs(word[it])
        for lst in (above(word[best]), above(tot), above(tot / len(seqd)), above(np.amax(np.stack(list(word.values())), 0))):
            salient[nm].update(lst)
times["ig"] = time.time() - t0
result["salient"] = [len(salient[nm]) for nm in names]
result["ig_skipped"] = skipped
result["times"] = times
result["h5_bytes"] = os.path.getsize(h5_path)
print(json.dumps(result))
'''


def run_authors(hf_dir, quant, prompts, golds, ig_limit, workdir, threads, task):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", AUTHORS, str(hf_dir), quant, json.dumps(prompts), json.dumps(golds),
                          str(ig_limit), str(workdir), str(threads), task], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"authors' pipeline ({quant}) failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall"] = time.time() - t0
    return r


def run_qinterp(quants, limit, ig_limit, workdir, threads, task):
    out = workdir / "qinterp.h5"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cli = ROOT / "build" / "qinterp"
    args = [str(cli), "run", "--model", str(SMOLLM2), "--task", task, "--limit", str(limit), "--ig-limit",
            str(ig_limit), "--mode", "paper", "--data", str(SHARED / "datasets/paper1"), "--out", str(out)]
    for q in quants:
        args += ["--quant", q]
    t0 = time.time()
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"qinterp run failed:\n{r.stderr[-3000:]}")
    stages = {}
    for line in r.stderr.splitlines():  # "forward boolq: 32/32 examples, ..., 0:12 elapsed"
        if " elapsed" in line and "ETA" not in line and ": " in line:
            name = line.split(":")[0]
            t = line.rsplit(", ", 1)[-1].split()[0].split(":")
            stages[name] = sum(int(x) * 60 ** i for i, x in enumerate(reversed(t)))
    import qinterp
    from qinterp.analysis import ResultStore
    res = {}
    with ResultStore(str(out), "r") as s:
        model = s.list("")[0]
        for q in quants:
            g = f"{model}/{q}/{task}"
            a = s.attrs(g + "/calibration")
            hooks = str(s.attrs(g)["hooks"]).split(",")
            res[q] = dict(accuracy=a["accuracy"], confidence=a["confidence"], ace=a["ace"],
                          dead=[int(s.read(f"{g}/{h}/dead/count")) for h in hooks],
                          salient=[int(s.read(f"{g}/{h}/salient/count")) for h in hooks],
                          correlation=sum(s.read(f"{g}/{h}/correlation/histogram") for h in hooks).tolist())
    return res, wall, stages, os.path.getsize(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="boolq", choices=["boolq", "toxicity", "piqa", "hellaswag"])
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--ig-limit", type=int, default=2)
    ap.add_argument("--quant", default="fp32,int8,nf4")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    quants = args.quant.split(",")
    with open(SHARED / f"datasets/paper1/{args.task}.csv", newline="") as f:
        rows = [r for _, r in zip(range(args.limit), csv.DictReader(f))]
    prompts, golds = [r["prompt"] for r in rows], [r["gold"] for r in rows]
    hf = hf_copy()
    work = pathlib.Path(tempfile.mkdtemp())
    try:
        q, q_wall, q_stages, q_bytes = run_qinterp(quants, args.limit, args.ig_limit, work, args.threads, args.task)
        authors = {p: run_authors(hf, p, prompts, golds, args.ig_limit, work, args.threads, args.task) for p in quants}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"SmolLM2-135M-Instruct, {args.task} first {args.limit} rows (IG on {args.ig_limit}), layers 0/14/29, "
          f"{args.threads} threads, --mode paper")
    print(f"{'':10} {'':8} {'accuracy':>9} {'confidence':>11} {'ACE':>8}  dead (3 layers)   salient (3 layers)")
    for p in quants:
        a, b = authors[p], q[p]
        print(f"{p:10} {'authors':8} {a['accuracy']:>9.4f} {a['confidence']:>11.6f} {a['ace']:>8.5f}  {str(a['dead']):17} {a['salient']}")
        print(f"{'':10} {'qinterp':8} {b['accuracy']:>9.4f} {b['confidence']:>11.6f} {b['ace']:>8.5f}  {str(b['dead']):17} {b['salient']}")
    print("correlation bins (0.0-0.1 ... 0.9-1.0), three layers pooled:")
    for p in quants:
        print(f"  {p:8} authors {authors[p]['correlation']}\n  {'':8} qinterp {q[p]['correlation']}")
    a_wall = sum(a["wall"] for a in authors.values())
    print("wall time, seconds:")
    for stage in ("predictions", "activations", "dead", "correlation", "ig"):
        print(f"  authors {stage:12} " + "  ".join(f"{p} {authors[p]['times'][stage]:7.1f}" for p in quants))
    for name, t in q_stages.items():
        print(f"  qinterp {name:24} {t:7.1f}")
    print("IG examples skipped (answer decodes to nothing): authors " +
          ", ".join(f"{p} {authors[p]['ig_skipped']}" for p in quants))
    print(f"end to end: authors {a_wall:.0f} s (HDF5 of activations {sum(a['h5_bytes'] for a in authors.values()) / 2**20:.0f} MiB), "
          f"qinterp {q_wall:.0f} s (result file {q_bytes / 2**20:.1f} MiB): {a_wall / q_wall:.1f}x")


if __name__ == "__main__":
    main()

"""Differential fuzzing of config.json: qinterp against transformers on the same mutated checkpoint.

Small randomly initialised checkpoints of each architecture (tests/python/test_architectures.py's
build) get config.json keys deleted or set to other values, other types or null, then load in both
libraries. Printed per case, unless both agree or both refuse: SILENT (both load, logits differ by
more than 2e-4 of their largest: the worst kind of bug), BUG-EXC (qinterp raised something other
than qinterp.Error), q-accepts-hf-refuses and q-refuses (to read: an unsupported feature must be
refused by name). Ends with the counts.

    PYTHONPATH=build/python ~/.cache/qinterp/venv/bin/python scripts/fuzz_configs.py SEED CASES [ARCHS]

Not part of `make test` (minutes, and random); docs/models.md says what it found.
"""
import copy, json, os, random, shutil, sys, tempfile, warnings
import torch
warnings.filterwarnings("ignore")
import transformers as tf
tf.logging.set_verbosity_error()
import qinterp
from differential import Tally, attempt
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python"))
from test_architectures import build, V

KEYS = {
    "head_dim": [8, 16, 32, None, 12, "16"],
    "num_attention_heads": [2, 8, 16, 1, 3],
    "num_key_value_heads": [1, 2, 4, None, 3, 8],
    "attention_bias": [True, False, None, "true", 1],
    "mlp_bias": [True, False, 1],
    "tie_word_embeddings": [True, False, None, 1, "yes"],
    "hidden_act": ["gelu", "gelu_new", "relu", "silu", "gelu_pytorch_tanh", "tanh", "swish", "quick_gelu", "gelu_fast", None],
    "hidden_activation": ["gelu", "gelu_new", "relu", "silu", "gelu_pytorch_tanh", "tanh", None],
    "rms_norm_eps": [1e-6, 0.5, 0, -1, None, "1e-5", 10],
    "layer_norm_eps": [1e-6, 0.5, 0, None],
    "rope_theta": [500.0, 1e6, 0, -5, None],
    "max_position_embeddings": [16, 32, 64, 4096, None, 0],
    "sliding_window": [4, 8, 16, 64, None, 0, -1, True],
    "use_sliding_window": [True, False],
    "max_window_layers": [0, 1, 2, 3],
    "partial_rotary_factor": [0.25, 0.5, 1.0, 0.3, 0, 2],
    "query_pre_attn_scalar": [16, 24, 256, None, 0],
    "final_logit_softcapping": [None, 1.0, 30.0, 0, -1],
    "attn_logit_softcapping": [None, 50.0],
    "sliding_window_pattern": [1, 2, 6, 0],
    "rope_local_base_freq": [100.0, 1e4],
    "qk_layernorm": [True, False],
    "pretraining_tp": [1, 2],
    "attention_dropout": [0.0, 0.5],
    "use_cache": [True, False],
    "bos_token_id": [0, 1, 300, None, -1],
    "eos_token_id": [2, [2, 3], None, 999, []],
    "pad_token_id": [0, None, 999],
    "model_type": ["llama", "mistral", "qwen2", "phi", "gemma3_text", "gemma2", "qwen3", "olmo"],
    "embd_pdrop": [0.0], "resid_pdrop": [0.0],
    "layer_types": None,  # special
    "rope_parameters": None,  # special
    "rope_scaling": None,  # special
    "scale_embedding": [True], "embedding_multiplier": [2.0], "logits_scaling": [2.0],
    "use_qk_norm": [True], "use_bidirectional_attention": [True, False],
    "num_hidden_layers": [2, 4, 1],
    "intermediate_size": [64, 256],
    "vocab_size": [128, 512],
}
ROPES = [
    {"rope_type": "default", "rope_theta": 1000.0},
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 0.5},
    {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0, "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    {"type": "linear", "factor": 3.0},
    {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
    None, "x", {},
]


def mutate(cfg, rng, arch):
    c = copy.deepcopy(cfg)
    log = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        k = rng.choice(list(KEYS))
        if k in ("rope_parameters", "rope_scaling"):
            v = rng.choice(ROPES)
            if arch == "gemma3" and k == "rope_parameters" and isinstance(v, dict) and rng.random() < 0.6:
                v = {"full_attention": v, "sliding_attention": rng.choice([{"rope_type": "default", "rope_theta": 500.0}, v])}
        elif k == "layer_types":
            n = c.get("num_hidden_layers", 3)
            v = rng.choice([[rng.choice(["sliding_attention", "full_attention"]) for _ in range(n)],
                            ["full_attention"] * n, ["sliding_attention"] * (n + 1), ["chunked_attention"] * n])
        else:
            v = rng.choice(KEYS[k] + ["DEL"])
        if v == "DEL":
            c.pop(k, None)
        else:
            c[k] = v
        log.append(f"{k}={json.dumps(v)}")
    return c, log


def logits_hf(path, ids):
    torch.manual_seed(123)
    m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(ids).logits


def close_logits(got, ref):
    if got.shape != ref.shape:
        return f"SILENT-SHAPE {tuple(got.shape)} against {tuple(ref.shape)}"
    err, scale = (got - ref).abs().max().item(), ref.abs().max().item()
    return "" if err <= 2e-4 * scale else f"SILENT dlogit {err:.3g} of {scale:.3g}"


def main():
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    archs = sys.argv[3].split(",") if len(sys.argv) > 3 else ["llama", "mistral", "qwen2", "phi", "gemma3"]
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="cfgfuzz")
    bases = {}
    for a in archs:
        d = os.path.join(root, a)
        over = dict(sliding_window=8) if a in ("mistral", "gemma3") else {}
        build(a, d, **over)
        bases[a] = d
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(5))
    tally = Tally("hf")
    for i in range(cases):
        a = rng.choice(archs)
        cfg = json.load(open(os.path.join(bases[a], "config.json")))
        c, log = mutate(cfg, rng, a)
        d = os.path.join(root, "m")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(bases[a], d)
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
        theirs = attempt(lambda: logits_hf(d, ids), False)
        ours = attempt(lambda: qinterp.load_model(d).forward(ids), True)
        tally.add(f"[{i}] {a} {' '.join(log)}", ours, theirs, close_logits)
    shutil.rmtree(root, ignore_errors=True)
    print(tally.counts)


if __name__ == "__main__":
    main()

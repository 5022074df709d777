"""Qwen2.5-Coder-0.5B-Instruct (GGUF: F32, Q5_0, Q8_0, Q6_K, Q4_K tensors) in qinterp against
Hugging Face transformers loading the same file (the gguf package dequantizes it; about 100 s on
2 cores). The Qwen2 architecture: grouped-query attention (14 heads, 2 KV heads), qkv biases,
rope base 1e6; its byte-level BPE with the `qwen2` pre-tokenizer (digits one by
one), 151,936 ids.

Tolerance: max |logit difference| < 2e-3 (fp32 both sides, the same dequantized weights; the
logits reach ~30), and the same argmax at every position."""
import numpy as np
import pytest
import torch

import qinterp
from conftest import QWEN25, left_padded_vs_transformers

TOL = 2e-3

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The year 2024 had 366 days; 3.14159 is pi, and 1,000,000 is a million.",
    "  indented\ttabs\n\n\nand   runs of   spaces   ",
    "Unicode: naïve café, 日本語のテキスト, Ελληνικά, emoji 🙂👍, and a long-word supercalifragilistic.",
    "<|im_start|>user\nWrite a haiku about quantization.<|im_end|>\n<|im_start|>assistant\n",
    "x=1;y=2\r\nprint(x+y)  # 3\n",
]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(QWEN25.parent), gguf_file=QWEN25.name,
                                              dtype=torch.float32).eval()
    return qinterp.load_model(QWEN25), hf


def test_config(pair):
    ours, hf = pair
    c = ours.config
    assert c["arch"] == "qwen2"
    assert (c["num_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]) == (24, 896, 4864, 151936)
    assert (c["num_heads"], c["num_kv_heads"], c["rope_theta"], c["qkv_bias"]) == (14, 2, 1000000.0, True)
    assert not c["tie_embeddings"]  # this file stores output.weight (Q6_K) beside token_embd (Q8_0)
    assert c["num_layers"] == hf.config.num_hidden_layers


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_transformers(pair, seed):
    ours, hf = pair
    ids = torch.randint(0, 151000, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(ids).logits
    got = ours.forward(ids)
    err = (got - ref).abs().max().item()
    print(f"Qwen2.5 GGUF vs transformers, seed {seed}: max |dlogit| = {err:.3g}")
    assert err < TOL
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_every_tensor_decodes_like_the_gguf_package(pair):
    """Each ggml type in the file (Q5_0 among them) gives transformers' (the gguf package's) values."""
    import gguf
    ours, hf = pair
    p = ours.named_parameters()
    hp = dict(hf.named_parameters())
    reader = gguf.GGUFReader(str(QWEN25))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    checked = set()
    for gname, hname in [("token_embd.weight", "model.embed_tokens.weight")] + [
            (f"blk.{l}.{g}", f"model.layers.{l}.{h}") for l in (0, 5, 23) for g, h in
            [("attn_q.weight", "self_attn.q_proj.weight"), ("attn_k.weight", "self_attn.k_proj.weight"),
             ("attn_v.weight", "self_attn.v_proj.weight"), ("attn_q.bias", "self_attn.q_proj.bias"),
             ("ffn_down.weight", "mlp.down_proj.weight"), ("ffn_up.weight", "mlp.up_proj.weight")]]:
        assert torch.equal(p[hname], hp[hname]), (gname, types[gname])
        checked.add(types[gname])
    assert "Q5_0" in checked, checked


def test_tokenizer_gives_transformers_ids():
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(str(QWEN25.parent), gguf_file=QWEN25.name)
    ours = qinterp.load_tokenizer(QWEN25)
    assert ours.vocab_size == 151936 or ours.vocab_size == len(ref)
    for text in TEXTS:
        want = ref(text, add_special_tokens=False)["input_ids"]
        assert ours.tokenize(text) == want, text
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=True), text


def test_tokenizer_gives_transformers_ids_on_the_paper_corpus():
    from test_tokenizers import assert_same_ids, corpus
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(str(QWEN25.parent), gguf_file=QWEN25.name)
    tok = qinterp.load_tokenizer(QWEN25)
    texts = corpus()
    assert_same_ids(tok.encode_many(texts, False, False), ref(texts, add_special_tokens=False)["input_ids"], texts,
                    "Qwen2.5 GGUF")


def test_generates_the_same_greedy_tokens(pair):
    ours, hf = pair
    tok = qinterp.load_tokenizer(QWEN25)
    ids = torch.tensor([tok.tokenize("def add(a, b):\n")])
    got = ours.generate(ids, max_new_tokens=12)
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(got[:, :ref.shape[1]], ref[:, :got.shape[1]]), (tok.decode(got[0].tolist()),)


def test_left_padded_batch_and_hook_act_match_transformers(pair):
    """A left-padded batch (the paper's batching) with the attention mask, and the neurons the
    paper counts: qinterp's blocks.{L}.mlp.hook_act equals transformers' mlp.act_fn output."""
    got, ref, act, ref_act, real = left_padded_vs_transformers(*pair, vocab_hi=151000, layer=11)
    # Unpadded, both sides run the same kernels (difference 0); with a mask the attention kernels
    # differ in rounding, which 24 layers grow to ~1e-4 of the values (measured 1.3e-3 on logits
    # up to ~30, 3.8e-4 on activations up to 2.8). A misplaced position or mask would be O(1).
    assert (got[real] - ref[real]).abs().max().item() < 5e-3
    act_err = (act[real] - ref_act[real]).abs().max().item()
    scale = ref_act[real].abs().max().item()
    print(f"Qwen2.5 left-padded: max |dlogit| {(got[real] - ref[real]).abs().max().item():.3g}, "
          f"max |d hook_act| {act_err:.3g} of max |act| {scale:.3g}")
    assert act_err < 5e-4 * scale
    assert act.shape == (2, 24, 4864)


@pytest.mark.parametrize("spec,tol", [("nf4", 0.35), ("int8", 0.1)])
def test_quantized_qwen_stays_close_and_keeps_biases_dense(pair, spec, tol):
    """bitsandbytes-style quantization of the block linears; the qkv biases stay full precision."""
    dense = pair[0]
    q = qinterp.load_model(QWEN25, quant=spec)
    ids = torch.randint(0, 151000, (1, 32), generator=torch.Generator().manual_seed(4))
    a, b = dense.forward(ids), q.forward(ids)
    rel = ((a - b).norm() / a.norm()).item()
    print(f"Qwen2.5 {spec}: relative logit change {rel:.3f}")
    assert 0 < rel < tol
    p = q.named_parameters()
    assert p["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float32
    assert torch.equal(p["model.layers.0.self_attn.q_proj.bias"], dense.named_parameters()["model.layers.0.self_attn.q_proj.bias"])
    assert "model.layers.0.self_attn.q_proj.weight.qdata" in p

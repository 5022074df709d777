"""SmolLM2-135M-Instruct (GGUF Q4_1) in qinterp against Hugging Face transformers loading the same
file. transformers dequantizes the GGUF with the gguf package and runs its LlamaForCausalLM in
fp32; qinterp decodes the blocks itself and runs its own decoder.

Tolerance: max |logit difference| < 5e-4 (logits reach ~35; measured 5.9e-5 on this machine),
and the same argmax at every position."""
import pytest
import torch

import qinterp
from conftest import SMOLLM2

TOL = 5e-4


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name,
                                              dtype=torch.float32).eval()
    return qinterp.load_model(SMOLLM2), hf


def test_config(pair):
    ours, hf = pair
    c = ours.config
    assert (c["num_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]) == (30, 576, 1536, 49152)
    assert (c["num_heads"], c["num_kv_heads"], c["rope_theta"]) == (9, 3, 100000.0)
    assert c["num_layers"] == hf.config.num_hidden_layers


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_transformers(pair, seed):
    ours, hf = pair
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49152, (2, 48), generator=g)
    with torch.no_grad():
        ref = hf(ids).logits
    got = ours.forward(ids)
    err = (got - ref).abs().max().item()
    print(f"SmolLM2 GGUF vs transformers, seed {seed}: max |dlogit| = {err:.3g}")
    assert err < TOL
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_embedding_and_mlp_weights_decode_like_gguf_package(pair):
    ours, hf = pair
    p = ours.named_parameters()
    hp = dict(hf.named_parameters())
    # Q8_0 embedding and a Q4_1 MLP weight decode to exactly what the gguf package gives.
    assert torch.equal(p["model.embed_tokens.weight"], hp["model.embed_tokens.weight"])
    assert torch.equal(p["model.layers.3.mlp.gate_proj.weight"], hp["model.layers.3.mlp.gate_proj.weight"])


def test_hook_act_width(pair):
    ours, _ = pair
    shapes = []
    h = ours.hooks.add("blocks.29.mlp.hook_act", lambda a, m: shapes.append(tuple(a.shape)))
    try:
        ours.forward(torch.tensor([[1, 504, 3458, 282]]))
    finally:
        ours.hooks.remove(h)
    assert shapes == [(1, 4, 1536)]

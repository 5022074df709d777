"""Hugging Face config.json as transformers >= 5 writes it: the rope settings in "rope_parameters".
Reading only the top-level keys fell back to theta 10000 without a word (logits off by ~5e-3)."""
import json

import pytest
import torch

import qinterp


def tiny_llama(path, theta, **rope):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=theta, tie_word_embeddings=False, **rope)
    m = LlamaForCausalLM(cfg).eval()
    m.save_pretrained(path)
    return m


@pytest.mark.parametrize("theta", [500000.0, 1e6])
def test_rope_theta_from_rope_parameters(tmp_path, theta):
    hf = tiny_llama(tmp_path, theta)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in written  # what transformers writes now
    ours = qinterp.load_model(tmp_path)
    assert ours.config["rope_theta"] == theta
    ids = torch.randint(0, 256, (2, 120), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    assert (ours.forward(ids) - ref).abs().max().item() < 1e-4


def test_rope_types_that_are_not_implemented_are_refused(tmp_path):
    tiny_llama(tmp_path, 10000.0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "dynamic", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qinterp.Error, match='rope type "dynamic"'):
        qinterp.load_model(tmp_path)
    # llama3 is implemented (test_architectures.py), and a llama3 entry lacking its parameters is named
    cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qinterp.Error, match='"rope_parameters" lacks "low_freq_factor"'):
        qinterp.load_model(tmp_path)


def test_a_tensor_no_role_takes_is_an_error_naming_it(tmp_path):
    """An o_proj.bias in a Llama checkpoint changes the output; qinterp used to drop such tensors
    without a word. transformers (attention_bias=True) uses it."""
    from safetensors.torch import load_file, save_file
    tiny_llama(tmp_path, 10000.0)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.1.self_attn.o_proj.bias"] = torch.ones(64)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(qinterp.Error, match=r"'model\.layers\.1\.self_attn\.o_proj\.bias' has no place"):
        qinterp.load_model(tmp_path)


def test_a_tied_config_with_an_lm_head_in_the_file_uses_it_as_transformers_does(tmp_path):
    """transformers 5 keeps a checkpoint's lm_head.weight when tie_word_embeddings is set but the
    two differ (it warns); qinterp gives the same logits (the lm_head is not an unknown tensor)."""
    from safetensors.torch import load_file, save_file
    tiny_llama(tmp_path, 10000.0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["lm_head.weight"] = torch.randn_like(tensors["lm_head.weight"])
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    ours = qinterp.load_model(tmp_path)
    assert not ours.config["tie_embeddings"]
    with torch.no_grad():
        assert (ours.forward(ids) - ref(ids).logits).abs().max().item() < 1e-4

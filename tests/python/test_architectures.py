"""Architectures beyond plain Llama against transformers on the same weights: Llama 3 and linear
rope scaling, Mistral's sliding window, Phi-2 (LayerNorm with bias, partial rotary, parallel
attention and MLP, biases everywhere, gelu_new), Gemma 3 (RMSNorm with 1 + w, sandwich and q/k
norms, scaled embeddings, local sliding-window layers with their own rope base between global
ones, query_pre_attn_scalar, logit soft-capping). Small randomly initialised models built from a
config with a fixed seed and saved as safetensors; their weights are then perturbed, since a fresh
initialisation (norms 1, biases 0, weights ~0.02) would hide a missing bias or a misplaced norm.

Each model is checked at every position of an unpadded batch, on a left-padded batch (the
paper's batching), and by greedy generation through the KV cache; Phi-2's hook_act is compared
with the output of transformers' mlp.activation_fn."""
import json

import pytest
import torch

import qinterp

V = 256


def perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


def build(kind, path, **over):
    import transformers as tf
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=2, max_position_embeddings=512, **common, **over)
        m = tf.LlamaForCausalLM(cfg)
    elif kind == "mistral":
        cfg = tf.MistralConfig(num_key_value_heads=2, max_position_embeddings=512, **common, **over)
        m = tf.MistralForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(num_key_value_heads=2, max_position_embeddings=512, **common, **over)
        m = tf.Qwen2ForCausalLM(cfg)
    elif kind == "gemma3":
        cfg = tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, max_position_embeddings=512, **common, **over)
        m = tf.Gemma3ForCausalLM(cfg)
    else:
        cfg = tf.PhiConfig(max_position_embeddings=512, **common, **over)
        m = tf.PhiForCausalLM(cfg)
    m = perturbed(m, 1)
    m.save_pretrained(path)
    m.generation_config.eos_token_id = None  # compare whole continuations, never cut at a random eos
    m.generation_config.pad_token_id = 0
    return m


def compare(ours, hf, T=40, tol=2e-4, tag=""):
    """Logits at every position (unpadded and left-padded) and a greedy continuation."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (2, T), generator=g)
    with torch.no_grad():
        ref = hf(ids).logits
    got = ours.forward(ids)
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    mask = (torch.arange(T) >= torch.tensor([[11], [0]])).long()
    with torch.no_grad():
        ref_p = hf(ids, attention_mask=mask).logits
    real = mask.bool()
    err_p = (ours.forward(ids, mask)[real] - ref_p[real]).abs().max().item()
    prompt = ids[:1, :T // 2]
    got_g = ours.generate(prompt, max_new_tokens=12, stop_tokens=[])
    with torch.no_grad():
        ref_g = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    print(f"{tag}: max |dlogit| {err:.2g} (padded {err_p:.2g}) of max |logit| {scale:.3g}")
    assert scale > 1.0  # the perturbation makes the logits informative
    assert err < tol * scale
    assert err_p < tol * scale
    assert torch.equal(got_g, ref_g), (got_g, ref_g)
    return ids


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "factor": 4.0},
], ids=["llama3", "linear"])
def test_llama_rope_scaling_matches_transformers(tmp_path, rope):
    hf = build("llama", tmp_path, rope_parameters={"rope_theta": 50000.0, **rope})
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == rope["rope_type"]
    ours = qinterp.load_model(tmp_path)
    assert ours.config["rope_scaling"] == rope["rope_type"]
    compare(ours, hf, T=120, tag=f"llama {rope['rope_type']}")
    # The scaling matters here: read as plain rope, the logits move well beyond the tolerance.
    plain = dict(written, rope_parameters={"rope_theta": 50000.0, "rope_type": "default"})
    (tmp_path / "config.json").write_text(json.dumps(plain))
    ids = torch.randint(3, V, (1, 120), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(ids).logits
    assert (qinterp.load_model(tmp_path).forward(ids) - ref).abs().max().item() > 1e-2 * ref.abs().max().item()


def test_mistral_sliding_window_shorter_than_the_prompt(tmp_path):
    hf = build("mistral", tmp_path, sliding_window=8)
    ours = qinterp.load_model(tmp_path)
    assert ours.config["sliding_window"] == 8
    ids = compare(ours, hf, T=40, tag="mistral window 8")
    # Without the window the same weights give other logits: the window is what is being tested.
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["sliding_window"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        ref = hf(ids).logits
    assert (qinterp.load_model(tmp_path).forward(ids) - ref).abs().max().item() > 1e-2 * ref.abs().max().item()


# config.json keys that transformers reads for one architecture only. Each case changed the logits
# silently (qinterp read the key where transformers ignores it, or the other way round) until
# config_from_hf_json followed transformers; found by mutating config.json and comparing both.
KEY_CASES = [
    ("llama", {}, dict(hidden_activation="gelu")),  # Gemma's name for the activation
    ("phi", {}, dict(hidden_activation="silu")),
    ("qwen2", {}, dict(partial_rotary_factor=0.5)),  # rotary fraction: Phi's key only
    ("mistral", {}, dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    ("gemma3", dict(sliding_window=8), dict(partial_rotary_factor=0.5)),
    # transformers runs a Mistral file with layer_types as Ministral: the window on sliding layers only
    ("mistral", dict(sliding_window=8), dict(layer_types=["full_attention", "sliding_attention", "full_attention"])),
]


@pytest.mark.parametrize("kind,over,edit", KEY_CASES, ids=[f"{k}-{next(iter(e))}" for k, _, e in KEY_CASES])
def test_config_keys_count_where_transformers_counts_them(tmp_path, kind, over, edit):
    import transformers as tf
    build(kind, tmp_path, **over)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, **edit)))
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    compare(qinterp.load_model(tmp_path), hf, T=40, tag=f"{kind} {edit}")


@pytest.mark.parametrize("edit,says", [
    (dict(attention_bias="true"), '"attention_bias" must be true or false'),
    (dict(tie_word_embeddings=1), '"tie_word_embeddings" must be true or false'),
    (dict(hidden_act=["silu"]), '"hidden_act" must be a string'),
    (dict(model_type=None), 'missing "model_type"'),
    (dict(eos_token_id=["2"]), '"eos_token_id" must hold token ids'),
    (dict(layer_types="full_attention"), '"layer_types" must be a list'),
    (dict(use_sliding_window="no"), '"use_sliding_window" must be true or false'),
    (dict(layer_types=["full_attention", "sliding_attention", "full_attention"]), "sliding layer_types"),
])
def test_config_values_of_the_wrong_type_are_named(tmp_path, edit, says):
    """Each of these reached Python as the JSON library's RuntimeError, or ran a model transformers
    would not (Qwen2 sliding layers without use_sliding_window)."""
    build("qwen2", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qinterp.Error, match=says) as e:
        qinterp.load_model(tmp_path)
    assert "config.json" in str(e.value)


@pytest.fixture(scope="module")
def phi(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi")
    hf = build("phi", path)
    return path, hf


def test_phi2_matches_transformers(phi):
    path, hf = phi
    ours = qinterp.load_model(path)
    c = ours.config
    assert (c["arch"], c["norm"], c["parallel_block"], c["rotary_dim"], c["gated_mlp"], c["lm_head_bias"]) == \
        ("phi", "layernorm", True, 8, False, True)
    compare(ours, hf, T=40, tag="phi")


def test_phi2_hook_act_is_the_activation_fn_output(phi):
    path, hf = phi
    ours = qinterp.load_model(path)
    ids = torch.randint(3, V, (2, 17), generator=torch.Generator().manual_seed(5))
    seen, ref = {}, []
    h = ours.hooks.add("blocks.1.mlp.hook_act", lambda a, m: seen.update(act=a.clone()))
    r = hf.model.layers[1].mlp.activation_fn.register_forward_hook(lambda mod, i, o: ref.append(o.clone()))
    try:
        ours.forward(ids)
        with torch.no_grad():
            hf(ids)
    finally:
        ours.hooks.remove(h)
        r.remove()
    assert seen["act"].shape == (2, 17, 128)
    assert (seen["act"] - ref[0]).abs().max().item() < 1e-5 * ref[0].abs().max().item() + 1e-6
    assert "blocks.1.hook_resid_mid" not in ours.hook_points
    ours.hooks.add("blocks.1.hook_resid_mid", lambda a, m: None)
    with pytest.raises(qinterp.Error, match="hook_resid_mid' never fires"):
        ours.forward(ids)


@pytest.mark.parametrize("spec,tol", [("nf4", 0.3), ("int8", 0.05), ("gptq4:group=32", 0.3)])
def test_phi2_quantizes_with_biases_and_norms_dense(phi, tmp_path, spec, tol):
    path, _ = phi
    dense = qinterp.load_model(path)
    q = qinterp.load_model(path)
    calib = torch.randint(3, V, (8, 32), generator=torch.Generator().manual_seed(6))
    q.quantize(spec, calibration=calib if spec.startswith("gptq") else None)
    ids = torch.randint(3, V, (1, 24), generator=torch.Generator().manual_seed(8))
    a, b = dense.forward(ids), q.forward(ids)
    rel = ((a - b).norm() / a.norm()).item()
    print(f"phi {spec}: relative logit change {rel:.3f}")
    assert 0 < rel < tol
    p, d = q.named_parameters(), dense.named_parameters()
    for name in ["model.layers.0.mlp.fc1.bias", "model.layers.0.self_attn.dense.bias",
                 "model.layers.0.input_layernorm.bias", "model.final_layernorm.weight", "lm_head.bias"]:
        assert torch.equal(p[name], d[name]), name
    assert "model.layers.0.mlp.fc2.weight.qdata" in p and "model.layers.0.mlp.fc2.weight" not in p
    q.save(str(tmp_path / "q"))
    again = qinterp.load_model(tmp_path / "q")
    assert torch.equal(again.forward(ids), b)
    assert again.linear_weight(0, "mlp.fc1").shape == (128, 64)
    with pytest.raises(qinterp.Error, match="no linear 'mlp.up_proj'.*mlp.fc1"):
        again.linear_weight(0, "mlp.up_proj")


def test_unknown_rope_type_architecture_and_stray_tensor_are_named(phi, tmp_path):
    path, _ = phi
    import shutil
    for f in ("config.json", "model.safetensors"):
        shutil.copy(path / f, tmp_path / f)
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, rope_parameters={"rope_type": "yarn", "factor": 2.0})))
    with pytest.raises(qinterp.Error, match='rope type "yarn"'):
        qinterp.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="falcon")))
    with pytest.raises(qinterp.Error, match='model_type "falcon" is not supported'):
        qinterp.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, qk_layernorm=True)))
    with pytest.raises(qinterp.Error, match="qk_layernorm"):
        qinterp.load_model(tmp_path)
    from safetensors.torch import load_file, save_file
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(path / "model.safetensors"))
    t["model.layers.2.post_attention_layernorm.weight"] = torch.ones(64)
    save_file(t, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(qinterp.Error, match=r"'model\.layers\.2\.post_attention_layernorm\.weight' has no place"):
        qinterp.load_model(tmp_path)


def test_inspect_names_what_differs_from_llama(phi):
    from test_cli import run
    path, _ = phi
    out = run("inspect", "--model", str(path)).stdout.decode()
    line = next(x for x in out.splitlines() if x.startswith("vs Llama:"))
    assert line.split(":", 1)[1].split() == [
        "phi:", "rotary_dim=8", "of", "16", "norm=layernorm", "parallel_block=true", "activation=gelu_tanh",
        "gated_mlp=false", "qkv_bias=true", "attn_out_bias=true", "mlp_bias=true", "lm_head_bias=true"], line


@pytest.mark.parametrize("kind", ["llama", "phi"])
def test_attention_hook_points_match_transformers(tmp_path, kind):
    """TransformerLens's attention points: hook_q/k/v are the projections (before rotary),
    hook_pattern the attention probabilities (transformers' eager attentions), hook_z the per-head
    output before o_proj; hook_attn_out (alias of attn.hook_out) and hook_mlp_out add up to the
    block's output."""
    hf = build(kind, tmp_path)
    hf.config._attn_implementation = "eager"
    ours = qinterp.load_model(tmp_path)
    ids = torch.randint(3, V, (2, 19), generator=torch.Generator().manual_seed(9))
    mask = (torch.arange(19) >= torch.tensor([[5], [0]])).long()
    L, seen = 1, {}
    names = ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
             "hook_mlp_out", "hook_resid_pre", "hook_resid_post"]
    for n in names:
        ours.hooks.add(f"blocks.{L}.{n}", lambda a, m, n=n: seen.update({n: a.clone()}))
    assert f"blocks.{L}.attn.hook_out" in ours.hooks.active()  # the alias is its point
    caught = {}
    attn = hf.model.layers[L].self_attn
    o_proj = attn.o_proj if kind == "llama" else attn.dense
    hs = [getattr(attn, m).register_forward_hook(lambda mod, i, o, m=m: caught.update({m: o.clone()}))
          for m in ("q_proj", "k_proj", "v_proj")]
    hs.append(o_proj.register_forward_hook(lambda mod, i, o: caught.update(z=i[0].clone(), out=o.clone())))
    try:
        got = ours.forward(ids, mask)
        with torch.no_grad():
            out = hf(ids, attention_mask=mask, output_attentions=True)
    finally:
        for h in hs:
            h.remove()
    real = mask.bool()
    B, T, hd = 2, 19, 16

    def close(a, b, what):
        err = (a - b).abs().max().item()
        assert err < 1e-5 * max(1.0, b.abs().max().item()), (what, err)

    # real positions only: what a padding position holds after layer 0 is a convention
    close(seen["attn.hook_q"][real], caught["q_proj"].view(B, T, 4, hd)[real], "q")
    kv = 2 if kind == "llama" else 4
    close(seen["attn.hook_k"][real], caught["k_proj"].view(B, T, kv, hd)[real], "k")
    close(seen["attn.hook_v"][real], caught["v_proj"].view(B, T, kv, hd)[real], "v")
    pat = seen["attn.hook_pattern"]
    assert pat.shape == (B, 4, T, T)
    # rows of real queries: same probabilities (padding queries differ by convention only)
    close(pat.transpose(1, 2)[real], out.attentions[L].transpose(1, 2)[real], "pattern")
    close(seen["attn.hook_z"][real], caught["z"].view(B, T, 4, hd)[real], "z")
    close(seen["hook_attn_out"][real], caught["out"][real], "attn_out")
    if kind == "phi":  # parallel block: resid_post = resid_pre + attn_out + mlp_out
        close(seen["hook_resid_post"], seen["hook_attn_out"] + seen["hook_mlp_out"] + seen["hook_resid_pre"], "sum")
    assert (got[real] - out.logits[real]).abs().max().item() < 1e-4 * out.logits.abs().max().item()
    # Zeroing one head's pattern changes the output; giving the pattern back unchanged does not.
    ours.hooks.clear()
    base = ours.forward(ids, mask)
    ours.hooks.add(f"blocks.{L}.attn.hook_pattern", lambda a, m: a.clone())
    assert (ours.forward(ids, mask) - base).abs().max().item() < 1e-5

    def ablate(a, m):
        a = a.clone()
        a[:, 2] = 0
        return a
    ours.hooks.clear()
    ours.hooks.add(f"blocks.{L}.attn.hook_pattern", ablate)
    assert (ours.forward(ids, mask) - base).abs().max().item() > 1e-3


GEMMA = dict(sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=5.0,
             layer_types=["sliding_attention", "full_attention", "sliding_attention"],
             rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                              "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}})


def test_gemma3_matches_transformers(tmp_path):
    hf = build("gemma3", tmp_path, **GEMMA)
    ours = qinterp.load_model(tmp_path)
    c = ours.config
    assert (c["arch"], c["norm"], c["layer_types"], c["rope_theta_local"], c["sliding_window"], c["qk_norm"],
            c["sandwich_norms"], c["scale_embeddings"], c["query_pre_attn_scalar"], c["final_logit_softcap"]) == \
        ("gemma3", "rms_one_plus", "sfs", 1e4, 8, True, True, True, 24.0, 5.0)
    ids = compare(ours, hf, T=40, tag="gemma3")
    # hook_act is transformers' mlp.act_fn output
    seen, ref = {}, []
    ours.hooks.add("blocks.2.mlp.hook_act", lambda a, m: seen.update(act=a.clone()))
    r = hf.model.layers[2].mlp.act_fn.register_forward_hook(lambda mod, i, o: ref.append(o.clone()))
    try:
        ours.forward(ids)
        with torch.no_grad():
            hf(ids)
    finally:
        r.remove()
        ours.hooks.clear()
    assert (seen["act"] - ref[0]).abs().max().item() < 1e-5 * ref[0].abs().max().item()
    # Each Gemma feature is load-bearing here: without it the logits move beyond the tolerance.
    cfg = json.loads((tmp_path / "config.json").read_text())
    with torch.no_grad():
        want = hf(ids).logits
    for change in [dict(final_logit_softcapping=None), dict(query_pre_attn_scalar=16),
                   dict(layer_types=["full_attention"] * 3),
                   dict(rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                         "sliding_attention": {"rope_theta": 1e6, "rope_type": "default"}})]:
        (tmp_path / "config.json").write_text(json.dumps(dict(cfg, **change)))
        err = (qinterp.load_model(tmp_path).forward(ids) - want).abs().max().item()
        assert err > 1e-3 * want.abs().max().item(), change


def test_gemma3_quantizes(tmp_path):
    build("gemma3", tmp_path, **GEMMA)
    dense = qinterp.load_model(tmp_path)
    ids = torch.randint(3, V, (1, 24), generator=torch.Generator().manual_seed(8))
    for spec, tol in [("nf4", 0.5), ("int8", 0.05)]:  # a broken layout gives ~1
        q = qinterp.load_model(tmp_path, quant=spec)
        rel = ((dense.forward(ids) - q.forward(ids)).norm() / dense.forward(ids).norm()).item()
        print(f"gemma3 {spec}: relative logit change {rel:.3f}")
        assert 0 < rel < tol
        p = q.named_parameters()
        assert torch.equal(p["model.layers.1.self_attn.q_norm.weight"],
                           dense.named_parameters()["model.layers.1.self_attn.q_norm.weight"])
        q.save(str(tmp_path / spec))
        assert torch.equal(qinterp.load_model(tmp_path / spec).forward(ids), q.forward(ids))


@pytest.mark.parametrize("kind,over", [("mistral", dict(sliding_window=8)), ("qwen2", {}), ("gemma3", GEMMA)])
def test_gptq4_on_each_architecture(tmp_path, kind, over):
    """GPTQ calibrates layer by layer through each architecture's own block (window, biases,
    sandwich norms); the quantized model stays close, and saves and reloads unchanged."""
    build(kind, tmp_path / "hf", **over)
    dense = qinterp.load_model(tmp_path / "hf")
    q = qinterp.load_model(tmp_path / "hf")
    q.quantize("gptq4:group=32", calibration=torch.randint(3, V, (8, 32), generator=torch.Generator().manual_seed(6)))
    ids = torch.randint(3, V, (1, 24), generator=torch.Generator().manual_seed(8))
    a, b = dense.forward(ids), q.forward(ids)
    rel = ((a - b).norm() / a.norm()).item()
    print(f"{kind} gptq4: relative logit change {rel:.3f}")
    assert 0 < rel < 0.5  # measured 0.04-0.3 on these tiny random models; a broken layout gives ~1
    q.save(str(tmp_path / "q"))
    assert torch.equal(qinterp.load_model(tmp_path / "q").forward(ids), b)


@pytest.mark.parametrize("layers,scalar", [(2, 16.0), (62, 8.0)])
def test_gemma3_gguf_settings_the_file_does_not_state(tmp_path, layers, scalar):
    """A Gemma 3 GGUF carries no layer pattern, local rope base or score scale: qinterp takes
    llama.cpp's (every sixth layer global, base 1e4, 1/sqrt(head size), but d_model / heads for the
    62-layer 27B), and subtracts the 1 llama.cpp adds to each norm weight. A tiny file written
    with gguf-py: d_model 32, 4 heads of 16, so the 27B rule gives 8, the others 16."""
    import gguf
    import numpy as np
    D, H, hd, I, Vg = 32, 4, 16, 48, 64
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma3")
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(layers)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(1)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_sliding_window(8)
    rng = np.random.default_rng(0)
    t = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.1
    w.add_tensor("token_embd.weight", t(Vg, D))
    w.add_tensor("output_norm.weight", 1 + t(D))
    for l in range(layers):
        for name, shape in [("attn_norm", (D,)), ("attn_q", (H * hd, D)), ("attn_k", (hd, D)), ("attn_v", (hd, D)),
                            ("attn_output", (D, H * hd)), ("attn_q_norm", (hd,)), ("attn_k_norm", (hd,)),
                            ("post_attention_norm", (D,)), ("ffn_norm", (D,)), ("ffn_gate", (I, D)),
                            ("ffn_up", (I, D)), ("ffn_down", (D, I)), ("post_ffw_norm", (D,))]:
            w.add_tensor(f"blk.{l}.{name}.weight", (1 + t(*shape)) if name.endswith("norm") else t(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = qinterp.load_model(tmp_path / "g.gguf")
    c = m.config
    assert c["query_pre_attn_scalar"] == scalar
    assert c["layer_types"] == "".join("f" if (l + 1) % 6 == 0 else "s" for l in range(layers))
    assert (c["rope_theta_local"], c["head_dim"], c["sliding_window"]) == (1e4, hd, 8)
    r = gguf.GGUFReader(str(tmp_path / "g.gguf"))
    stored = next(x for x in r.tensors if x.name == "blk.1.attn_q_norm.weight").data
    assert torch.equal(m.named_parameters()["model.layers.1.self_attn.q_norm.weight"], torch.from_numpy(stored - 1))


def _tiny_llama_gguf(path, extra):
    """A 2-layer llama GGUF with random weights, written with gguf-py, plus `extra` key/values."""
    import gguf
    import numpy as np
    D, H, hd, I, Vg = 32, 4, 8, 48, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(2)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(1e4)
    for key, (kind, value) in extra.items():
        getattr(w, f"add_{kind}")(key, value)
    rng = np.random.default_rng(0)
    t = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.1
    w.add_tensor("token_embd.weight", t(Vg, D))
    w.add_tensor("output_norm.weight", 1 + t(D))
    for l in range(2):
        for name, shape in [("attn_norm", (D,)), ("attn_q", (H * hd, D)), ("attn_k", (2 * hd, D)), ("attn_v", (2 * hd, D)),
                            ("attn_output", (D, H * hd)), ("ffn_norm", (D,)), ("ffn_gate", (I, D)), ("ffn_up", (I, D)),
                            ("ffn_down", (D, I))]:
            w.add_tensor(f"blk.{l}.{name}.weight", (1 + t(*shape)) if name.endswith("norm") else t(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("extra,says", [
    ({}, None),
    ({"llama.rope.dimension_count": ("uint32", 8)}, None),  # the head size: fine
    ({"llama.rope.dimension_count": ("uint32", 4)}, "partial rotary"),
    ({"llama.expert_count": ("uint32", 8)}, "mixture-of-experts"),
    ({"llama.final_logit_softcapping": ("float32", 30.0)}, "soft-capping"),
])
def test_gguf_settings_qinterp_does_not_implement_are_refused(tmp_path, extra, says):
    """llama.cpp rotates rope.dimension_count dimensions, routes experts, caps logits; qinterp ran
    such files as if the keys were absent."""
    path = _tiny_llama_gguf(tmp_path / "t.gguf", extra)
    if says is None:
        assert qinterp.load_model(path).forward(torch.tensor([[1, 2, 3]])).shape == (1, 3, 64)
    else:
        with pytest.raises(qinterp.Error, match=says):
            qinterp.load_model(path)


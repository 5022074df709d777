"""Paper 2's perplexity and speed: both perplexity protocols against a direct computation with
transformers on the same weights and windows, GPTQ's random calibration windows against Python's
own random module, and the perplexity / speed commands."""
import math
import os
import random
import subprocess

import h5py
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import qinterp
from conftest import ROOT, SHARED, SMOLLM2, STORIES, write_hf_checkpoint

WIKI = SHARED / "datasets" / "wikitext2" / "wiki.test.raw"
CLI = os.environ.get("QINTERP_CLI", str(ROOT / "build" / "qinterp"))


def rows_joined():
    """WikiText-2 as the data set's rows, written here independently of the library."""
    rows = []
    for line in WIKI.read_text(encoding="utf-8").split("\n")[:-1]:  # the file ends with "\n"
        rows.append("" if line.strip(" ") == "" else line + "\n")
    return "\n\n".join(rows)


def hf_gptq(hf, ids, seqlen, windows):
    """GPTQ's eval loop: mean over windows of the window's mean next-token loss."""
    losses = []
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
            losses.append(hf(input_ids=x, labels=x).loss.double())
    return math.exp(torch.stack(losses).mean().item())


def hf_llamacpp(hf, ids, n_ctx, chunks, bos):
    """llama.cpp's perplexity: BOS replaces each chunk's first token; positions n_ctx/2 .. n_ctx-2
    predict the next token."""
    nll, count, first = 0.0, 0, n_ctx // 2
    with torch.no_grad():
        for c in range(chunks):
            x = ids[c * n_ctx:(c + 1) * n_ctx].clone()
            if bos is not None:
                x[0] = bos
            logp = torch.log_softmax(hf(input_ids=x.unsqueeze(0)).logits[0].double(), -1)
            tgt = x[first + 1:]
            nll -= logp[first:n_ctx - 1].gather(1, tgt.unsqueeze(1)).sum().item()
            count += n_ctx - 1 - first
    return math.exp(nll / count), count


@pytest.fixture(scope="module")
def stories_hf(tmp_path_factory, stories_model):
    d = tmp_path_factory.mktemp("stories_hf")
    write_hf_checkpoint(stories_model, d)
    return LlamaForCausalLM.from_pretrained(str(d), torch_dtype=torch.float32).eval()


def test_wikitext_rows_joined_as_the_loaders_do():
    raw = WIKI.read_text(encoding="utf-8")
    joined = qinterp._C.wikitext_joined(raw)
    assert joined == rows_joined()
    assert joined.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_stories_both_protocols_match_transformers(stories_model, stories_tok, stories_hf):
    ids = torch.tensor(stories_tok.encode(rows_joined()))
    assert ids[0].item() == 1 and (ids == 1).sum().item() == 1  # one BOS, at the very start
    r = qinterp.perplexity(stories_model, stories_tok, "wikitext2", max_windows=40)
    assert r["protocol"] == "gptq" and r["seqlen"] == 512 and r["windows"] == 40
    assert r["stream_tokens"] == len(ids) and r["tokens"] == 40 * 511
    ref = hf_gptq(stories_hf, ids, 512, 40)
    assert abs(r["ppl"] / ref - 1) < 1e-4, (r["ppl"], ref)
    assert abs(math.exp(r["nll"]) - r["ppl"]) < 1e-9 * r["ppl"]

    raw_ids = torch.tensor(stories_tok.encode(WIKI.read_text(encoding="utf-8")))
    r = qinterp.perplexity(stories_model, stories_tok, "wikitext2", protocol="llamacpp", max_windows=30)
    ref, count = hf_llamacpp(stories_hf, raw_ids, 512, 30, bos=1)
    assert r["seqlen"] == 512 and r["tokens"] == count == 30 * 255
    assert abs(r["ppl"] / ref - 1) < 1e-4, (r["ppl"], ref)
    # The two protocols are different numbers: every figure must carry its protocol's name.
    assert abs(r["ppl"] / qinterp.perplexity(stories_model, stories_tok, "wikitext2", max_windows=30)["ppl"] - 1) > 1e-3


def test_smollm2_both_protocols_match_transformers_on_the_gguf():
    hf = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name,
                                              torch_dtype=torch.float32).eval()
    model = qinterp.load_model(SMOLLM2)
    tok = qinterp.load_tokenizer(SMOLLM2)
    ids = torch.tensor(tok.encode(rows_joined()))
    r = qinterp.perplexity(model, tok, "wikitext2", seqlen=256, max_windows=3)
    ref = hf_gptq(hf, ids, 256, 3)
    assert r["tokens"] == 3 * 255 and abs(r["ppl"] / ref - 1) < 1e-4, (r["ppl"], ref)
    # SmolLM2's tokenizer adds no BOS, so llama.cpp's chunks keep their first token.
    raw_ids = torch.tensor(tok.encode(WIKI.read_text(encoding="utf-8")))
    r = qinterp.perplexity(model, tok, "wikitext2", protocol="llamacpp", seqlen=256, max_windows=3)
    ref, count = hf_llamacpp(hf, raw_ids, 256, 3, bos=None)
    assert r["tokens"] == count and abs(r["ppl"] / ref - 1) < 1e-4, (r["ppl"], ref)


def test_perplexity_refuses_bad_input(stories_model, stories_tok, tmp_path):
    with pytest.raises(qinterp.Error, match="unknown perplexity protocol 'hf'"):
        qinterp.perplexity(stories_model, stories_tok, "some text", protocol="hf")
    with pytest.raises(qinterp.Error, match="shorter than one window of 512"):
        qinterp.perplexity(stories_model, stories_tok, "Once upon a time")
    with pytest.raises(qinterp.Error, match="longer than the model's context of 512"):
        qinterp.perplexity(stories_model, stories_tok, "Once upon a time", seqlen=1024)
    with pytest.raises(qinterp.Error, match="seqlen must be >= 2"):
        qinterp.perplexity(stories_model, stories_tok, "Once upon a time", seqlen=-3)
    f = tmp_path / "story.txt"
    f.write_text("Once upon a time there was a cat. " * 100)
    r = qinterp.perplexity(stories_model, stories_tok, f, seqlen=64)
    assert r["windows"] == r["stream_tokens"] // 64 and r["tokens"] == r["windows"] * 63


def test_random_calibration_windows_are_gptq_loaders_windows():
    ids = torch.arange(5000) * 7
    for seed, n, seqlen in [(0, 128, 256), (1, 5, 4999), (2**40 + 3, 3, 17)]:
        w = qinterp.random_calibration_windows(ids, n, seqlen, seed)
        random.seed(seed)
        starts = [random.randint(0, len(ids) - seqlen - 1) for _ in range(n)]
        assert w.shape == (n, seqlen)
        assert torch.equal(w, torch.stack([ids[s:s + seqlen] for s in starts]))
    with pytest.raises(qinterp.Error, match="5000 tokens; windows of 5000 need more"):
        qinterp.random_calibration_windows(ids, 1, 5000)


def cli(*args):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_perplexity_command_writes_every_precision(tmp_path):
    out = tmp_path / "ppl.h5"
    r = cli("perplexity", "--model", STORIES / "stories260K.bin", "--quant", "fp32", "--quant", "nf4",
            "--quant", "gptq4:group=32", "--max-windows", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "protocol gptq" in r.stdout
    lines = [l for l in r.stdout.splitlines() if l.startswith("| ") and not l.startswith("| precision")]
    assert [l.split("|")[1].strip() for l in lines] == ["fp32", "nf4", "gptq4:group=32"]
    assert "GPTQ calibration: 128 random windows (seed 0) of 256 tokens" in r.stderr
    with h5py.File(out, "r") as f:
        g = f["stories260K/fp32/wikitext2/Perplexity_gptq"]
        assert g["windows"][()] == 3 and g["tokens"][()] == 3 * 511 and g.attrs["protocol"] == "gptq"
        printed = float(lines[0].split("|")[2])
        assert abs(g["ppl"][()] - printed) < 1e-3
        assert "calib=128,seqlen=256" in f["stories260K/gptq4:group=32/wikitext2/Perplexity_gptq"].attrs["spec"]
    bad = cli("perplexity", "--model", STORIES / "stories260K.bin", "--protocol", "hf")
    assert bad.returncode == 1 and "unknown perplexity protocol 'hf'" in bad.stderr
    bad = cli("perplexity", "--model", STORIES / "stories260K.bin", "--dataset", tmp_path / "none.txt")
    assert bad.returncode == 1 and "none.txt" in bad.stderr and "Traceback" not in bad.stderr


def test_gptq_records_the_calibration_it_used(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Once upon a time there was a little dog named Tim. He liked to run in the park. " * 2)
    out = tmp_path / "q"
    r = cli("quantize", "--model", STORIES / "stories260K.bin", "--quant", "gptq4:group=32", "--calib", text,
            "--out", out)
    assert r.returncode == 0, r.stderr
    tok = qinterp.load_tokenizer(STORIES / "tok512.bin")
    n = len(tok.encode(text.read_text()))
    assert f"128 random windows (seed 0) of {n - 1} tokens" in r.stderr
    m = qinterp.load_model(out)
    assert m.quant.endswith(f"calib=128,seqlen={n - 1},compute=fp16")
    assert qinterp.load_model(out, quant="gptq4:group=32").quant == m.quant  # the ask ignores calibration


def test_speed_command_and_api(tmp_path):
    m = qinterp.load_model(STORIES / "stories260K.bin", quant="nf4")
    s = qinterp.speed(m, prompt_tokens=32, new_tokens=16, warmup=2)
    stored = sum(t.numel() * t.element_size() for t in m.named_parameters().values())
    assert s["weight_bytes"] == stored and s["head_q8_bytes"] == 0  # stories260K's head is no Q8_0 grid
    assert s["new_tokens"] == 16 and s["decode_seconds"] > 0
    assert abs(s["decode_tokens_per_second"] - 16 / s["decode_seconds"]) < 1e-6 * s["decode_tokens_per_second"]
    assert s["peak_host_bytes"] > stored and s["peak_device_allocated"] == -1
    out = tmp_path / "speed.h5"
    r = cli("speed", "--model", STORIES / "stories260K.bin", "--quant", "fp32", "--quant", "int8", "--quant", "nf4",
            "--prompt-tokens", "32", "--new-tokens", "16", "--out", out)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("| ") and not l.startswith("| precision")]
    assert [l.split("|")[1].strip() for l in lines] == ["fp32", "int8", "nf4"]
    with h5py.File(out, "r") as f:
        for p in ["fp32", "int8", "nf4"]:
            g = f[f"stories260K/{p}/speed"]
            ref = qinterp.load_model(STORIES / "stories260K.bin", quant=p if p != "fp32" else None)
            assert g["weight_bytes"][()] == sum(t.numel() * t.element_size() for t in ref.named_parameters().values())
            assert g["new_tokens"][()] == 16 and g["decode_tokens_per_second"][()] > 0 and g["head_q8_bytes"][()] == 0
    bad = cli("speed", "--model", STORIES / "stories260K.bin", "--prompt-tokens", "500", "--new-tokens", "100")
    assert bad.returncode == 1 and "exceed the model's context of 512" in bad.stderr


@pytest.mark.parametrize("fmt", ["nf4", "fp4:double_quant=0", "nf4:block=128", "fp4:block=32", "rtn4:group=32",
                                 "rtn3:group=128", "rtn2:group=64,sym=0", "rtn8:group=128", "rtn4:group=0",
                                 "rtn4:group=31"])
def test_fused_gemv_on_the_cpu_equals_dequantize_then_multiply(fmt):
    gemv = qinterp.quant.gemv_4bit if fmt[:3] in ("nf4", "fp4") else qinterp.quant.gemv_grouped
    g = torch.Generator().manual_seed(3)
    # odd shapes: blocks straddling rows (130 % 64), scalar-only rows (2), several x groups (5 rows)
    for rows, cols in [(7, 130), (33, 256), (5, 2), (64, 1000), (3, 129)]:
        w = torch.randn(rows, cols, generator=g)
        q = qinterp.quant.quantize(w, fmt)
        deq = qinterp.quant.dequantize(q).double()
        for n in [1, 3, 5]:
            x = torch.randn(n, cols, generator=g)
            y = gemv(x, q)
            ref = x.double() @ deq.T
            bound = 2e-6 * (x.double().abs() @ deq.abs().T) + 1e-30
            assert y.dtype == torch.float32 and y.shape == (n, rows)
            assert ((y.double() - ref).abs() <= bound).all(), (fmt, rows, cols, n, (y.double() - ref).abs().max())


def test_fused_4bit_gemv_decodes_double_quantized_absmax_bit_for_bit():
    # The kernel decodes the 8-bit absmax itself (eight blocks per gather); with the same codes and
    # the absmax decoded here as bitsandbytes does (product, then + offset, in float32), a weight
    # stored without double quantization must give identical bits.
    g = torch.Generator().manual_seed(11)
    # the kernel decodes 2048 blocks at a time: several row chunks (16384 / 32 blocks a row), and a
    # row longer than that (131072 / 32)
    for rows, cols, block in [(33, 256, 64), (70, 576, 64), (300, 128, 32), (9, 1024, 128), (37, 16384, 32),
                              (3, 131072, 32)]:
        w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3
        dq = qinterp.quant.quantize(w, f"nf4:block={block}")
        plain = qinterp.quant.quantize(w, f"nf4:block={block},double_quant=0")
        pd, pp = dq.parts(), plain.parts()
        assert "absmax2" in pd and "absmax2" not in pp
        decoded = pd["code2"][pd["absmax"].long()] * pd["absmax2"].repeat_interleave(256)[: pd["absmax"].numel()]
        pp["absmax"].copy_(decoded + pd["offset"])
        pp["qdata"].copy_(pd["qdata"])
        for n in [1, 3]:
            x = torch.randn(n, cols, generator=g)
            assert torch.equal(qinterp.quant.gemv_4bit(x, dq), qinterp.quant.gemv_4bit(x, plain)), (rows, cols, n)


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_grouped_gemv_nibble_kernels_against_the_byte_path(bits):
    # Nibble codes take one of two kernels. Groups of a multiple of 64 columns (or one group a row)
    # take the 64-code kernel, which sums code * x and subtracts zero * sum(x) once per group: within
    # float32 rounding of the product. Other groups take the first kernel, which decodes by shifts and
    # 2^23 arithmetic (integer zeros) or by unpack-and-convert (any other zero) and sums in the byte
    # path's order: identical bits. So does the 64-code kernel's fallback, taken when x holds a value
    # that its prepared form cannot scale exactly (0 < |x| < 2^-114).
    g = torch.Generator().manual_seed(bits)
    for rows, cols, group in [(40, 576, 128), (9, 256, 32), (5, 200, 64), (3, 100, 0)]:
        w = torch.randn(rows, cols, generator=g)
        q4 = qinterp.quant.quantize(w, f"rtn{bits}:group={group}")
        q8 = qinterp.quant.quantize(w, f"rtn8:group={group}")
        p4, p8 = q4.parts(), q8.parts()
        packed = p4["qdata"]
        codes = torch.stack([packed >> 4, packed & 15], 2).reshape(rows, -1)[:, :cols]
        p8["qdata"].copy_(codes)
        p8["scale"].copy_(p4["scale"])
        p8["zero"].copy_(p4["zero"])
        assert torch.equal(qinterp.quant.dequantize(q8), qinterp.quant.dequantize(q4))
        for zero_shift in [0.0, 40.0, 0.5]:  # integer zeros take the shift path, 0.5 the conversion
            if zero_shift:
                p4["zero"].add_(zero_shift)
                p8["zero"].add_(zero_shift)
            deq = qinterp.quant.dequantize(q4).double()
            for n in [1, 2, 4]:
                x = torch.randn(n, cols, generator=g)
                y4, y8 = qinterp.quant.gemv_grouped(x, q4), qinterp.quant.gemv_grouped(x, q8)
                ref = x.double() @ deq.T
                bound = 2e-6 * (x.double().abs() @ deq.abs().T) + 1e-30
                for y in (y4, y8):
                    assert ((y.double() - ref).abs() <= bound).all(), (bits, rows, cols, zero_shift, n)
                if group % 64:
                    assert torch.equal(y4, y8), (bits, rows, cols, zero_shift, n, (y4 - y8).abs().max())
                else:
                    x[:, 3] = 1e-36  # the fallback: the first kernel
                    assert torch.equal(qinterp.quant.gemv_grouped(x, q4), qinterp.quant.gemv_grouped(x, q8))


@pytest.mark.parametrize("rows,cols", [(7, 130), (33, 256), (5, 2), (64, 1000), (3, 129), (1, 17)])
def test_dense_gemv_on_the_cpu_equals_a_matmul(rows, cols):
    # the decoding-step kernel of dense float32 layers and the LM head (quant::gemv_dense)
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    w = torch.randn(rows, cols, generator=g)
    for n in [1, 2, 3, 4, 5]:
        x = torch.randn(n, cols, generator=g)
        y = qinterp.quant.gemv_dense(x, w)
        ref = x.double() @ w.double().T
        bound = 2e-6 * (x.double().abs() @ w.double().abs().T) + 1e-30
        assert y.dtype == torch.float32 and y.shape == (n, rows)
        assert ((y.double() - ref).abs() <= bound).all(), (rows, cols, n, (y.double() - ref).abs().max())
    x3 = torch.randn(2, 3, cols, generator=g)  # leading dimensions kept, rows taken four at a time
    y3 = qinterp.quant.gemv_dense(x3, w).double()
    assert y3.shape == (2, 3, rows)
    assert ((y3 - x3.double() @ w.double().T).abs() <= 2e-6 * (x3.double().abs() @ w.double().abs().T) + 1e-30).all()
    with pytest.raises(qinterp.Error, match="does not fit the weight"):
        qinterp.quant.gemv_dense(torch.randn(1, cols + 1), w)


def test_lm_head_q8_blocks_are_the_gguf_files_own_and_decode_as_the_dense_head():
    # SmolLM2's GGUF stores its (tied) LM head as Q8_0; decoding reads those blocks (found exactly in
    # the float32 head) instead of the dense head. The gguf package reads the file's blocks.
    import gguf
    import numpy as np
    t = next(t for t in gguf.GGUFReader(str(SMOLLM2)).tensors if t.name == "token_embd.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    raw = np.asarray(t.data).reshape(-1, 34)
    d_file = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    q_file = raw[:, 2:].copy().view(np.int8)
    m = qinterp.load_model(SMOLLM2)
    assert m.compact_head_bytes == q_file.size + d_file.size * 4
    assert qinterp.speed(m, prompt_tokens=8, new_tokens=2, warmup=1)["head_q8_bytes"] == m.compact_head_bytes
    w = m.named_parameters()["model.embed_tokens.weight"]
    q, d = qinterp.quant.exact_q8_blocks(w)
    assert np.array_equal(q.numpy().reshape(-1, 32), q_file) and np.array_equal(d.numpy().reshape(-1), d_file)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 576, generator=g)
    y = qinterp.quant.gemv_q8_blocks(x, q, d).double()
    w64 = torch.from_numpy(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)).double().reshape(49152, 576)
    assert ((y - x.double() @ w64.T).abs() <= 2e-6 * (x.double().abs() @ w64.abs().T)).all()
    assert qinterp.quant.exact_q8_blocks(torch.randn(4, 64, generator=g)) is None
    # greedy text is the same with and without the blocks; a write to the head in place is seen
    tok = qinterp.load_tokenizer(SMOLLM2)
    ids = torch.tensor([tok.encode("The capital of France is")])
    with_blocks = m.generate(ids, max_new_tokens=24)
    m.set_compact_head(False)
    assert m.compact_head_bytes == 0
    assert torch.equal(m.generate(ids, max_new_tokens=24), with_blocks)
    m.set_compact_head(True)
    w[tok.encode(" Paris")[-1]].zero_()
    out = m.generate(ids, max_new_tokens=24)
    logits = m.forward(out)[0, ids.size(1) - 1:-1]
    assert torch.equal(logits.argmax(-1), out[0, ids.size(1):])


@pytest.mark.parametrize("quant", [None, "nf4:compute=fp32"])
def test_model_decoded_with_the_fused_kernel_generates_as_the_full_forward(quant):
    # one row per step takes the fused kernels (dense: gemv_dense for every layer and the LM head)
    m = qinterp.load_model(STORIES / "stories260K.bin", quant=quant)
    tok = qinterp.load_tokenizer(STORIES / "tok512.bin")
    ids = torch.tensor([tok.encode("Once upon a time")])
    out = m.generate(ids, max_new_tokens=40)  # one row per step: the fused kernel
    logits = m.forward(out)  # all positions at once: dequantize + matmul
    steps = logits[0, ids.size(1) - 1:-1]
    assert torch.equal(steps.argmax(-1), out[0, ids.size(1):])


def test_fused_grouped_gemv_with_act_order_and_a_gptq_model_decode():
    g = torch.Generator().manual_seed(6)
    w, xs = torch.randn(48, 256, generator=g), torch.randn(512, 256, generator=g)
    h = qinterp.quant.GptqHessian(256)
    h.add(xs)
    q, _ = qinterp.quant.gptq_quantize(w, h.matrix, "gptq4:group=64,act_order=1")
    x = torch.randn(2, 256, generator=g)
    ref = x.double() @ qinterp.quant.dequantize(q).double().T
    assert torch.allclose(qinterp.quant.gemv_grouped(x, q).double(), ref, rtol=0, atol=1e-4)
    m = qinterp.load_model(STORIES / "stories260K.bin", quant="rtn4:group=32,compute=fp32")
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    out = m.generate(ids, max_new_tokens=40)  # one row per step: the fused kernel
    steps = m.forward(out)[0, ids.size(1) - 1:-1]  # every position at once: dequantize + matmul
    assert torch.equal(steps.argmax(-1), out[0, ids.size(1):])


# ---- decode=q8: int8 activations in decoding steps (llama.cpp's Q8_0), written here from its
# definition and checked against the kernels; bitsandbytes gives the 4-bit code tables.

def q8_activations(x):
    """x [n, cols] float32 in runs of 32: q = round-half-even(x * (127 / amax)), d = amax / 127, both
    in float32 (an all-zero run: q = 0, d = 0)."""
    n, cols = x.shape
    r = x.reshape(n, cols // 32, 32)
    amax = r.abs().amax(-1, keepdim=True)
    # torch's `127 / t` is 127 * reciprocal(t), rounded twice: divide a tensor by a tensor instead
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    return torch.round(r * inv).double(), (amax / 127).double()


def q8_weights(q, fmt):
    """The int8 weights of each run and the float factor of each column, both [rows, cols]: 4-bit
    round(127 * code) with absmax / 127; rtn/gptq code - zero with the group's scale."""
    import bitsandbytes.functional as F
    rows, cols = q.shape
    p = q.parts()
    if fmt[:3] in ("nf4", "fp4"):
        flat = torch.stack([p["qdata"] >> 4, p["qdata"] & 15], -1).reshape(-1)[: rows * cols].long()
        table = torch.round(127 * F.get_4bit_type(fmt[:3], device="cpu").float())
        absmax = p["absmax"]
        if "absmax2" in p:  # bitsandbytes' decoding: code2[a] * absmax2 of its 256, then + offset
            absmax = p["code2"][absmax.long()] * p["absmax2"].repeat_interleave(256)[: absmax.numel()] + p["offset"]
        block = int(fmt.split("block=")[1].split(",")[0]) if "block=" in fmt else 64
        factor = (absmax.double() / 127).repeat_interleave(block)[: rows * cols]
        return table[flat].double().reshape(rows, cols), factor.reshape(rows, cols)
    codes = torch.stack([p["qdata"] >> 4, p["qdata"] & 15], -1).reshape(rows, -1)[:, :cols].double()
    group = int(fmt.split("group=")[1].split(",")[0]) if "group=" in fmt else 128
    group = group or cols
    zero = p["zero"].double().repeat_interleave(group, 1)[:, :cols]
    return codes - zero, p["scale"].double().repeat_interleave(group, 1)[:, :cols]


def q8_product(x, q, fmt):
    """y = sum over runs of d * (int8 weights . q) times the weight's factor, in double, and the sum
    of the terms' magnitudes (the scale of float32 rounding in any order of summation)."""
    qx, d = q8_activations(x)
    w8, f = q8_weights(q, fmt)
    rows, cols = w8.shape
    terms = (qx.reshape(x.size(0), 1, cols) * d.repeat_interleave(32, 1).reshape(x.size(0), 1, cols)) * (w8 * f)
    return terms.sum(-1), terms.abs().sum(-1), qx.reshape(x.size(0), cols), d.repeat_interleave(32, 1).reshape(x.size(0), cols)


Q8_FORMATS = ["nf4:decode=q8", "nf4:double_quant=0,decode=q8", "fp4:block=32,decode=q8", "nf4:block=128,decode=q8",
              "rtn4:group=32,decode=q8", "rtn3:group=128,decode=q8", "rtn2:group=64,sym=0,decode=q8",
              "rtn4:group=0,decode=q8", "rtn4:group=128,sym=0,decode=q8"]


@pytest.mark.parametrize("fmt", Q8_FORMATS)
def test_q8_decoding_gemv_equals_its_definition(fmt):
    gemv = qinterp.quant.gemv_4bit if fmt[:3] in ("nf4", "fp4") else qinterp.quant.gemv_grouped
    g = torch.Generator().manual_seed(len(fmt))
    # 576 = 4.5 blocks of 128 and 4.5 groups of 128 (a short last group); 256 and 1024 whole blocks
    for rows, cols in [(7, 256), (70, 576), (33, 1024), (3, 128)]:
        w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 2
        q = qinterp.quant.quantize(w, fmt)
        assert q.spec.endswith(",decode=q8")
        exact = qinterp.quant.quantize(w, fmt.replace(",decode=q8", "").replace("decode=q8", ""))
        block = 128 if "block=128" in fmt else 0
        for n in [1, 2, 3, 4, 5]:
            x = torch.randn(n, cols, generator=g) * 3
            x[:, 32:64] = 0  # an all-zero run: d = 0
            y = gemv(x, q)
            assert y.dtype == torch.float32 and y.shape == (n, rows)
            if block and cols % block:  # rows that are not whole blocks: the exact kernel, same bits
                assert torch.equal(y, gemv(x, exact)), (fmt, rows, cols, n)
                continue
            ref, scale, qx, d = q8_product(x, q, fmt)
            err = (y.double() - ref).abs()
            assert (err <= 2e-6 * scale + 1e-30).all(), (fmt, rows, cols, n, err.max())
            # and within what int8 activations can cost against the exact product: each |w| times
            # half a step d / 2, plus (4-bit) the int8 code table's half step of absmax / 127
            deq = qinterp.quant.dequantize(q).double()
            w8, f = q8_weights(q, fmt)
            bound = (deq.abs() @ (d / 2).T).T + ((f / 2) @ (qx * d).abs().T).T * (fmt[:3] in ("nf4", "fp4"))
            gap = (y.double() - x.double() @ deq.T).abs()
            assert (gap <= bound * 1.0001 + 2e-6 * scale + 1e-30).all(), (fmt, rows, cols, n, (gap - bound).max())
        x3 = torch.randn(2, 3, cols, generator=g)  # leading dimensions kept
        assert torch.equal(gemv(x3, q), gemv(x3.reshape(6, cols), q).reshape(2, 3, rows))


def test_q8_decoding_with_zeros_the_byte_trick_cannot_take():
    # integer zeros in [0, 15] are subtracted from the bytes; any other zero sums that group in
    # scalar code: the same definition either way
    g = torch.Generator().manual_seed(21)
    for rows, cols, group in [(40, 576, 128), (9, 256, 32)]:
        w = torch.randn(rows, cols, generator=g)
        q = qinterp.quant.quantize(w, f"rtn4:group={group},sym=0,decode=q8")
        p = q.parts()
        p["zero"][::2] += 0.5  # every other row: non-integer zeros
        p["zero"][1::4] += 40.0  # some: outside the nibbles' range
        x = torch.randn(3, cols, generator=g)
        ref, scale, _, _ = q8_product(x, q, f"rtn4:group={group}")
        err = (qinterp.quant.gemv_grouped(x, q).double() - ref).abs()
        assert (err <= 2e-6 * scale + 1e-30).all(), (rows, cols, group, err.max())


def test_q8_decoding_spec_round_trips_and_refuses_what_it_cannot_do():
    P = qinterp.quant.parse_spec
    assert P("nf4:decode=q8") == "nf4:block=64,double_quant=1,compute=fp16,decode=q8"
    assert P("nf4:decode=exact") == P("nf4") == "nf4:block=64,double_quant=1,compute=fp16"
    assert P("gptq3:decode=q8").endswith(",decode=q8") and P(P("rtn4:decode=q8")) == P("rtn4:decode=q8")
    for bad, msg in [("int8:decode=q8", "decode"), ("rtn8:decode=q8", "decode"), ("gptq8:decode=q8", "decode"),
                     ("nf4:decode=foo", "decode=foo must be exact or q8"), ("fp16:decode=q8", "decode")]:
        with pytest.raises(qinterp.Error, match=msg):
            P(bad)
    # rows that are not whole runs of 32 take the exact kernel
    w = torch.randn(5, 200)
    x = torch.randn(1, 200)
    assert torch.equal(qinterp.quant.gemv_grouped(x, qinterp.quant.quantize(w, "rtn4:group=0,decode=q8")),
                       qinterp.quant.gemv_grouped(x, qinterp.quant.quantize(w, "rtn4:group=0")))


@pytest.mark.parametrize("quant", ["nf4:compute=fp32,decode=q8", "rtn4:group=32,compute=fp32,decode=q8"])
def test_model_decoded_with_q8_activations_follows_the_full_forward(quant):
    # decoding steps take the q8 kernel; the full forward of the same tokens (many rows) does not.
    # Where the forward's choice is clear (top-1 ahead by more than 0.5), the step must agree.
    m = qinterp.load_model(STORIES / "stories260K.bin", quant=quant)
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    out = m.generate(ids, max_new_tokens=60)
    steps = m.forward(out)[0, ids.size(1) - 1:-1]
    top2 = steps.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.5
    assert clear.sum() >= 30
    assert torch.equal(steps.argmax(-1)[clear], out[0, ids.size(1):][clear])

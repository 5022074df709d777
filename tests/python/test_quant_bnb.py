"""qinterp's 4-bit and 8-bit formats against bitsandbytes (PyPI) on the CPU: identical bytes.

bitsandbytes 0.50's CPU path is the oracle: quantize_4bit / dequantize_4bit (NF4, FP4, with and
without double quantization of the absmax), create_dynamic_map, and the LLM.int8() pieces
(int8_vectorwise_quant, int8_mixed_scaled_mm).
"""
import pytest
import torch

import qinterp
import qinterp.quant as Q

import bitsandbytes as bnb  # noqa: F401  (the oracle: imported plainly, so a broken install fails loudly)
import bitsandbytes.functional as F

SHAPES = [(64, 128), (33, 65), (7,), (1, 4097), (300, 256)]


def _input(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    flat = x.view(-1)
    if flat.numel() >= 256:
        flat[:128] = 0  # all-zero blocks (one or two, whatever the block size)
    return x.to(dtype)


def test_dynamic_map_is_bitsandbytes():
    assert torch.equal(Q.dynamic_map(), F.create_dynamic_map())


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_identical_to_bitsandbytes(quant_type, block, dtype, double_quant):
    for i, shape in enumerate(SHAPES):
        x = _input(shape, dtype, 100 + i)
        packed, state = F.quantize_4bit(x, blocksize=block, quant_type=quant_type,
                                        compress_statistics=double_quant)
        qt = Q.quantize(x, f"{quant_type}:block={block},double_quant={int(double_quant)}")
        parts = qt.parts()
        assert torch.equal(parts["qdata"], packed.view(-1)), (shape, "packed codes")
        if double_quant:
            assert torch.equal(parts["absmax"], state.absmax), (shape, "8-bit absmax codes")
            assert torch.equal(parts["absmax2"], state.state2.absmax), (shape, "absmax of the absmax")
            assert torch.equal(parts["offset"], state.offset), (shape, "offset")
            assert torch.equal(parts["code2"], state.state2.code), (shape, "dynamic map")
        else:
            assert torch.equal(parts["absmax"], state.absmax), (shape, "absmax")
        ours = Q.dequantize(qt)
        theirs = F.dequantize_4bit(packed, state)
        assert ours.dtype == dtype and ours.shape == x.shape
        assert torch.equal(ours, theirs), (shape, "dequantized values")


def test_low_level_4bit_functions_match():
    x = _input((96, 64), torch.float16, 7)
    packed, absmax = Q.quantize_4bit(x, "nf4", 64)
    bp, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, bp) and torch.equal(absmax, st.absmax)
    out = Q.dequantize_4bit(packed, absmax, x.shape, torch.float16, "nf4", 64)
    assert torch.equal(out, F.dequantize_4bit(bp, st))


def test_int8_weights_identical_to_bitsandbytes():
    w = _input((48, 200), torch.float16, 3)
    cb, scb, _ = F.int8_vectorwise_quant(w.clone())
    qt = Q.quantize(w, "int8")
    assert torch.equal(qt.parts()["qdata"], cb)
    assert torch.equal(qt.parts()["scale"], scb)


@pytest.mark.parametrize("outliers", [False, True])
def test_int8_activations_and_layer_output(outliers):
    g = torch.Generator().manual_seed(11)
    w = (torch.randn(96, 256, generator=g) * 0.05).half()
    bias = (torch.randn(96, generator=g) * 0.1).half()
    x = torch.randn(24, 256, generator=g).half()
    if outliers:
        x[:, 17] *= 20  # a whole feature above the threshold, as in LLM.int8()'s analysis
        x[3, 200] = -9.0
    ca, sca, cols = torch.ops.bitsandbytes.int8_vectorwise_quant(x.clone(), 6.0)
    ours_q, ours_s, ours_cols = Q.int8_vectorwise_quant(x, 6.0)
    assert torch.equal(ours_q, ca) and torch.equal(ours_s, sca)
    if outliers:
        assert torch.equal(ours_cols, cols) and ours_cols.tolist() == [17, 200]
    else:
        assert ours_cols.numel() == 0
    cb, scb, _ = F.int8_vectorwise_quant(w.clone())
    theirs, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(x, ca, cb, sca, scb, cols if outliers else None, bias)
    qt = Q.quantize(w, "int8:threshold=6.0")
    ours = Q.linear(x, qt, bias)
    assert ours.dtype == torch.float16
    # Same operations in the same order; the int32 product is exact on both sides. Tolerance:
    # one fp16 rounding of the output (relative 2^-11) on values up to a few units.
    err = (ours.float() - theirs.float()).abs().max().item()
    assert err <= 2e-3 * theirs.float().abs().max().item(), err
    # and LLM.int8() stays close to the fp16 product (the decomposition is what keeps it close)
    exact = x.float() @ w.float().t() + bias.float()
    assert (ours.float() - exact).norm() / exact.norm() < 0.02


@pytest.mark.parametrize("outliers", [False, True])
def test_int8_decoding_step_on_the_cpu_is_the_general_path_bit_for_bit(outliers):
    # <= 32 float32 rows take the fused CPU path (x quantized in C++, AVX2 int32 dot products, four
    # rows a pass); its value must be the general path's (33 rows), written out here with the same
    # torch operations.
    g = torch.Generator().manual_seed(12)
    w = torch.randn(70, 200, generator=g) * 0.05  # 200 columns: six 32-byte steps and a tail of 8
    bias = torch.randn(70, generator=g) * 0.1
    qt = Q.quantize(w, "int8:threshold=6.0,compute=fp32")
    wq, scale = qt.parts()["qdata"], qt.parts()["scale"]
    for n in [1, 2, 3, 4, 5, 9, 32, 33]:
        x = (torch.randn(n, 200, generator=g) * 2).clamp(-5.9, 5.9)
        if outliers:
            x[0, 17] = 40.0  # an outlier in one row: for n > 1 its column leaves every row's int8 part
            x[n - 1, 150] = -7.5
        q, s, cols = Q.int8_vectorwise_quant(x, 6.0)
        acc = (q.double() @ wq.double().T).to(torch.int32)  # exact
        ref = acc * (s.unsqueeze(1) * scale.unsqueeze(0)) * 6.200124e-05 + bias
        if cols.numel():
            ref = ref.addmm(x.index_select(1, cols), (wq.index_select(1, cols) * scale.unsqueeze(1) * 7.874015718698502e-3).t())
        assert (cols.numel() > 0) == outliers
        ours = Q.linear(x, qt, bias)
        assert torch.equal(ours, ref), (n, (ours - ref).abs().max())
        assert torch.equal(Q.linear(x.unsqueeze(0), qt, bias), ref.unsqueeze(0))  # leading dimensions kept


def test_threshold_zero_disables_decomposition():
    x = torch.randn(8, 64).half()
    x[:, 5] = 50.0
    q, s, cols = Q.int8_vectorwise_quant(x, 0.0)
    assert cols.numel() == 0
    assert torch.equal(s, x.float().abs().amax(1))


def test_bad_spec_lists_valid_specs():
    with pytest.raises(qinterp.Error, match="valid specs"):
        Q.quantize(torch.randn(4, 4), "nf3")
    with pytest.raises(qinterp.Error, match="block"):
        Q.quantize(torch.randn(4, 4), "nf4:block=100")


@pytest.mark.parametrize("spec", ["nf4", "fp4:double_quant=0", "int8", "rtn8", "rtn4", "rtn4:group=32"])
def test_empty_and_degenerate_weights(spec):
    # a weight with no rows round-trips; one with no input columns is refused by name
    q = Q.quantize(torch.randn(0, 64), spec)
    assert Q.dequantize(q).shape == (0, 64)
    if spec.startswith(("int8", "rtn")):
        with pytest.raises(qinterp.Error, match="column"):
            Q.quantize(torch.randn(4, 0), spec)
    with pytest.raises(qinterp.Error, match="floating point"):
        Q.gemv_4bit(torch.ones(1, 64, dtype=torch.long), Q.quantize(torch.randn(8, 64), "nf4"))


@pytest.mark.parametrize("spec", ["nf4", "fp4:double_quant=1", "int8", "rtn4:group=32", "rtn8"])
@pytest.mark.parametrize("bad", ["inf", "nan", "overflow"])
def test_non_finite_weights_are_refused(spec, bad):
    """bitsandbytes quantizes a block holding inf or NaN (or a float32 value beyond float16, made
    inf by the conversion) into a scale of inf or NaN and codes that mean nothing; each such case
    also came out with other codes than qinterp's. Refused, counting the values."""
    w = torch.randn(8, 64)
    if bad == "overflow":
        w[3, 5] = 1e6
        w = w.half()
    else:
        w[3, 5] = float(bad)
    with pytest.raises(qinterp.Error, match="1 non-finite value"):
        Q.quantize(w, spec)


def test_model_quantize_names_the_layer_with_non_finite_weights(tmp_path):
    from conftest import STORIES
    m = qinterp.load_model(STORIES / "stories260K.bin")
    params = m.named_parameters()
    name = next(k for k in params if "layers.1." in k and "up_proj" in k)
    with torch.no_grad():
        params[name][0, 0] = float("nan")  # the model's own storage
    with pytest.raises(qinterp.Error, match=r"layer 1, linear 5 .*non-finite"):
        m.quantize("nf4")


NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
FP4 = sorted({s * m / 12 for s in (1, -1) for m in (0, 0.0625, 8, 12, 4, 6, 2, 3)})


@pytest.mark.parametrize("quant_type, codes", [("nf4", NF4), ("fp4", FP4)])
def test_ties_at_every_midpoint_like_bitsandbytes(quant_type, codes):
    """A block holding every midpoint between adjacent codes (and +-1, so that absmax is 1 and the
    values are compared as they are) through the production quantizer: the same bytes as
    bitsandbytes, whatever side each tie goes to."""
    mids = [(a + b) / 2 for a, b in zip(codes, codes[1:])]
    vals = [1.0, -1.0] + mids + [-m for m in mids]
    block = torch.tensor((vals * 4)[:64], dtype=torch.float32)
    x = torch.cat([block, block.flip(0)])  # two blocks of 64
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=False)
    qt = Q.quantize(x, f"{quant_type}:block=64,double_quant=0")
    assert torch.equal(qt.parts()["qdata"], packed.view(-1))
    if torch.cuda.is_available():
        assert torch.equal(Q.quantize(x.cuda(), f"{quant_type}:block=64,double_quant=0").parts()["qdata"].cpu(),
                           packed.view(-1))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fp16_layer_product_with_many_rows_against_bitsandbytes(quant_type):
    # compute=fp16 with more than a few rows on the CPU: a float32 product of the widened operands,
    # rounded once (quant::wide_linear), on the weight bitsandbytes dequantizes. Ours is within half
    # an fp16 ulp of the exact product plus float32's accumulation error; bitsandbytes' matmul_4bit
    # (torch's CPU fp16 product) is too, so the two differ by at most twice that.
    g = torch.Generator().manual_seed(12)
    w = (torch.randn(300, 256, generator=g) * 0.05).half()
    bias = (torch.randn(300, generator=g) * 0.1).half()
    x = torch.randn(40, 256, generator=g).half()  # 40 rows: more than kWideRows
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=True)
    ours = Q.linear(x, Q.quantize(w, quant_type), bias)
    theirs = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
    assert ours.dtype == theirs.dtype == torch.float16 and ours.shape == theirs.shape
    wd = F.dequantize_4bit(packed, state).double()
    exact = x.double() @ wd.t() + bias.double()
    mag = x.double().abs() @ wd.abs().t() + bias.double().abs()
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs())).clamp_min(-14) - 10)
    err = (ours.double() - exact).abs()
    assert (err <= 0.5 * ulp + mag * 2.0**-20).all(), (err / ulp).max()
    assert ((ours.double() - theirs.double()).abs() <= ulp + mag * 2.0**-19).all()

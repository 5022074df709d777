"""qinterp's ggml block decoders against the gguf package's numpy decoders on random blocks."""
import numpy as np
import pytest
import torch

import qinterp

import gguf
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

# (type, elements per block, bytes per block, byte offsets of fp16 scales to keep finite)
CASES = [
    ("Q8_0", 32, 34, [0]),
    ("Q4_0", 32, 18, [0]),
    ("Q4_1", 32, 20, [0, 2]),
    ("Q5_0", 32, 22, [0]),
    ("Q5_1", 32, 24, [0, 2]),
    ("Q2_K", 256, 84, [80, 82]),
    ("Q3_K", 256, 110, [108]),
    ("Q4_K", 256, 144, [0, 2]),
    ("Q5_K", 256, 176, [0, 2]),
    ("Q6_K", 256, 210, [208]),
]


@pytest.mark.parametrize("name,be,bb,scales", CASES)
def test_random_blocks_match_gguf_package(name, be, bb, scales):
    rng = np.random.default_rng(0)
    rows, blocks_per_row = 3, 5
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, bb), dtype=np.uint8)
    for off in scales:  # random but finite fp16 scales in [-2, 2]
        raw[..., off:off + 2] = np.frombuffer(
            rng.uniform(-2, 2, size=rows * blocks_per_row).astype(np.float16).tobytes(), dtype=np.uint8
        ).reshape(rows, blocks_per_row, 2)
    raw = raw.reshape(rows, blocks_per_row * bb)
    ref = dequantize(raw, getattr(T, name))  # [rows, blocks_per_row * be] float32
    got = qinterp.dequantize_gguf(torch.from_numpy(raw.copy()).flatten(), name, (rows, blocks_per_row * be))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got.numpy(), ref) or name.endswith("_K"), "exact for the simple block types"


@pytest.mark.parametrize("name,dtype", [("F16", np.float16), ("F32", np.float32)])
def test_plain_types(name, dtype):
    x = np.random.default_rng(1).standard_normal(64).astype(dtype)
    raw = torch.from_numpy(np.frombuffer(x.tobytes(), dtype=np.uint8).copy())
    assert np.array_equal(qinterp.dequantize_gguf(raw, name, (64,)).numpy(), x.astype(np.float32))


def test_bf16():
    x = torch.randn(64).to(torch.bfloat16)
    raw = x.view(torch.uint8).clone()
    assert torch.equal(qinterp.dequantize_gguf(raw, "BF16", (64,)), x.float())


@pytest.mark.parametrize("name,be,bb,scales", CASES)
def test_truncated_or_ragged_tensors_raise(name, be, bb, scales):
    with pytest.raises(qinterp.Error, match="do not hold"):
        qinterp.dequantize_gguf(torch.zeros(2 * bb - 1, dtype=torch.uint8), name, (2 * be,))
    with pytest.raises(qinterp.Error, match=f"not a whole number of {name} blocks|do not hold"):
        qinterp.dequantize_gguf(torch.zeros(2 * bb, dtype=torch.uint8), name, (2 * be - 1,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SKIPPED: no CUDA device here; runs on a GPU machine")
@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1"])
def test_cuda_matches_cpu(name):
    be, bb = 32, {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[name]
    raw = torch.randint(0, 256, (10000, bb), dtype=torch.uint8)
    raw[:, 1] &= 0x3B
    if name == "Q4_1":
        raw[:, 3] &= 0xBB
    raw = raw.flatten()
    cpu = qinterp.dequantize_gguf(raw, name, (10000 * be,))
    gpu = qinterp.dequantize_gguf(raw.cuda(), name, (10000 * be,)).cpu()
    assert torch.equal(cpu, gpu)

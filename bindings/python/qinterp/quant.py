"""qinterp.quant — quantize tensors in the formats of the papers (bitsandbytes NF4/FP4, LLM.int8(),
round-to-nearest, GPTQ) and get them back.

    qt = qinterp.quant.quantize(w, "nf4")          # QuantizedTensor: packed data, absmax, spec
    w2 = qinterp.quant.dequantize(qt)              # torch tensor of w's dtype and shape
    y = qinterp.quant.linear(x, qt, bias)          # the quantized layer's forward (QLinear)

Spec strings: "nf4", "fp4", "int8", "rtn8", "rtn4", "gptq4", ... with parameters such as
"nf4:block=64,double_quant=1,compute=fp16" (see docs/quantization.md).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from . import _C
from ._C import GptqHessian, QuantizedTensor

parse_spec = _C.parse_spec
dynamic_map = _C.dynamic_map


def quantize(tensor: torch.Tensor, spec: str) -> QuantizedTensor:
    """Quantize a float32/float16/bfloat16 tensor (on CPU or CUDA). GPTQ: use gptq_quantize."""
    return _C.quantize(tensor, spec)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """Back to a dense tensor of the original dtype and shape, on qt's device."""
    return _C.dequantize(qt)


def linear(x: torch.Tensor, weight: QuantizedTensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x Wᵀ + b through the quantized layer (compute dtype from the spec; x's dtype out)."""
    return _C.linear(x, weight, bias)


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes.functional.quantize_4bit without the state object: (packed uint8 [n/2, 1], absmax fp32)."""
    return _C.quantize_4bit(x, quant_type, blocksize)


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], dtype: torch.dtype,
                    quant_type: str = "nf4", blocksize: int = 64) -> torch.Tensor:
    return _C.dequantize_4bit(packed, absmax, quant_type, blocksize, list(shape), dtype)


def int8_vectorwise_quant(x: torch.Tensor, threshold: float = 0.0):
    """LLM.int8() row-wise quantization: (int8 rows, row absmax fp32, outlier column indices)."""
    return _C.int8_vectorwise_quant(x, threshold)


def gemv_4bit(x: torch.Tensor, weight: QuantizedTensor) -> torch.Tensor:
    """x Wᵀ for a 4-bit weight, fused: the CUDA kernel on a GPU, the AVX2 + FMA kernel for float32 on a CPU
    (even in_features), else dequantize + matmul."""
    return _C.gemv_4bit(x, weight)


def gemv_grouped(x: torch.Tensor, weight: QuantizedTensor) -> torch.Tensor:
    """x Wᵀ for an rtn/gptq weight, fused (AVX2 + FMA) for float32 on a CPU when the groups are in
    natural column order; dequantize + matmul otherwise (act-order, other dtypes and devices)."""
    return _C.gemv_grouped(x, weight)


def gemv_dense(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x Wᵀ for a dense float32 weight [out, in], the decoding-step kernel (AVX2 + FMA, rows streamed by
    every thread) on a CPU; at::linear otherwise. The model's dense layers and LM head use it for a
    few rows without gradient."""
    return _C.gemv_dense(x, weight)


def wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch.nn.functional.linear for x and weight of one dtype; on a CPU an fp16/bf16 product of 16
    rows or more runs as a float32 product of the widened operands, bias added in float32, rounded
    once to the dtype (float32 accumulation, as a GPU's fp16 GEMM, at float32 speed). Every
    general-path product of the quantized formats and the model's dense layers goes through it."""
    return _C.wide_linear(x, weight, bias)


def exact_q8_blocks(weight: torch.Tensor):
    """(q, d) with weight == d.repeat_interleave(32, 1) * q exactly (q int8 [out, in], d float32 [out, in / 32],
    d = a run's max |value| / 127), as a GGUF Q8_0 tensor decodes; None when weight has no such form
    (not float32 on the CPU, in % 32 != 0, or any value off the grid)."""
    return _C.exact_q8_blocks(weight)


def gemv_q8_blocks(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x Wᵀ from those blocks for float32 x on the CPU: per run of 32, d times the fp32 sum of x * q. The
    decoding-step kernel of an LM head that has exact Q8_0 blocks (Model.compact_head_bytes)."""
    return _C.gemv_q8_blocks(x, q, d)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: str = "gptq4") -> Tuple[QuantizedTensor, float]:
    """GPTQ on one layer: weight [out, in], hessian [in, in] (GptqHessian.matrix). Returns (qt, loss)."""
    return _C.gptq_quantize(weight, hessian, spec)


__all__ = ["QuantizedTensor", "GptqHessian", "quantize", "dequantize", "linear", "quantize_4bit", "dequantize_4bit",
           "gemv_grouped", "gemv_dense", "wide_linear", "exact_q8_blocks", "gemv_q8_blocks",
           "int8_vectorwise_quant", "gemv_4bit", "gptq_quantize", "parse_spec", "dynamic_map"]

"""qinterp — what quantization does to the inside of large language models.

    import qinterp
    model = qinterp.load_model("stories260K.bin")
    tok = qinterp.load_tokenizer("tok512.bin")
    ids = torch.tensor([tok.encode("Once upon a time")])
    logits = model.forward(ids)                      # [1, T, vocab] float32
    model.hooks.add("blocks.2.mlp.hook_act", lambda act, mask: print(act.shape))
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import torch  # noqa: F401  (loads libtorch before the extension needs it)

from . import _C
from . import analysis  # noqa: F401  (qinterp.analysis)
from . import quant  # noqa: F401  (qinterp.quant)
from ._C import Error, Hooks, Model, ResultStore, Tokenizer, cuda_built
from .attach import attach
from .experiment import load_task, report, run

__version__ = _C.__version__

_DTYPES = {None: "", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# ggml type numbers (ggml.h) of the block formats qinterp decodes.
GGML_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
              "BF16": 30}


def load_model(path: Union[str, os.PathLike], quant: Optional[str] = None, device: str = "cpu",
               dtype: Union[None, str, torch.dtype] = None, calibration: Optional[torch.Tensor] = None) -> Model:
    """Load a llama2.c .bin, a GGUF file, a Hugging Face safetensors checkpoint, or a model saved
    by Model.save / `qinterp quantize`.

    quant: a spec string ("nf4", "int8", "rtn4:group=128", "gptq4", ...) to quantize on load;
    GPTQ also needs calibration token ids [N, T]. dtype: None/"fp32", "fp16", "bf16" or the torch
    dtypes (the non-quantized parts); device: "cpu", "cuda", "cuda:N".
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        dtype = _DTYPES[dtype]
    return _C.load_model(os.fspath(path), quant or "", str(device), dtype or "", calibration)


def load_tokenizer(path: Union[str, os.PathLike]) -> Tokenizer:
    """Load a tokenizer: a model directory, tokenizer.json, a SentencePiece .model, a .gguf or a
    llama2.c tokenizer.bin. Ids match the format's reference library (docs/tokenizers.md)."""
    return _C.load_tokenizer(os.fspath(path))


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str], bos: Optional[bool] = None,
                 pad_id: Optional[int] = None, eos: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encode texts and pad them on the left (the papers' setting).

    bos/eos default to the model's convention; pad_id to the tokenizer's pad, else eos, else 0.
    Returns ids [batch, max_len] int64 and mask [batch, max_len] bool (True = real token).
    """
    return tokenizer.encode_batch(list(texts), bos, eos, pad_id)


def dequantize_gguf(raw: torch.Tensor, ggml_type: Union[str, int], shape: Sequence[int]) -> torch.Tensor:
    """Decode ggml blocks (a uint8 tensor on CPU or CUDA) into a float32 tensor of `shape`."""
    if isinstance(ggml_type, str) and ggml_type not in GGML_TYPES:
        raise Error(f"dequantize_gguf: no decoder for ggml type {ggml_type!r} (decodable: {', '.join(GGML_TYPES)})")
    t = GGML_TYPES[ggml_type] if isinstance(ggml_type, str) else int(ggml_type)
    n = 1
    for d in shape:
        n *= int(d)
    return _C.dequantize_gguf(raw, t, n).view(*shape)


def _hooks_add(self, name: str, fn):
    """Attach fn at a hook point: fn(activation, mask), or fn(activation, mask, name) when it takes
    three positional arguments without defaults (or *args); it returns
    None to observe or a tensor of the activation's shape to replace it. Returns a handle for remove()."""
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
        required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        named = len(required) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):  # builtins without a signature
        named = False
    return self._add_named(name, fn) if named else _C.Hooks.add_plain(self, name, fn)


def _wikitext2_path() -> str:
    env = os.environ.get("QINTERP_WIKITEXT2")
    if env:
        return env
    here = os.path.abspath(os.getcwd())
    while True:
        cand = os.path.join(here, "shared", "datasets", "wikitext2", "wiki.test.raw")
        if os.path.isfile(cand):
            return cand
        up = os.path.dirname(here)
        if up == here:
            raise Error("perplexity: WikiText-2 not found (set QINTERP_WIKITEXT2 to wiki.test.raw, or pass the text)")
        here = up


def perplexity(model: Model, tokenizer: Tokenizer, text: Union[str, os.PathLike] = "wikitext2",
               protocol: str = "gptq", seqlen: Optional[int] = None, max_windows: Optional[int] = None,
               batch: int = 1, progress: bool = False) -> dict:
    """Perplexity of `model` on a text under a named protocol (docs/perplexity.md).

    text: "wikitext2" (WikiText-2's test split: $QINTERP_WIKITEXT2, else shared/datasets/wikitext2
    beside the working directory or a parent; joined as GPTQ's loaders do for protocol "gptq", the
    raw file for "llamacpp"), a path (os.PathLike) to a text file, or the text itself.
    protocol: "gptq" (non-overlapping windows, every position scored) or "llamacpp" (512-token
    chunks, BOS first, second half scored). seqlen: gptq min(2048, context), llamacpp 512.
    Returns {ppl, nll (mean, nats), tokens (scored), windows, seqlen, stream_tokens, protocol}."""
    if isinstance(text, os.PathLike):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    elif text == "wikitext2":
        with open(_wikitext2_path(), encoding="utf-8", newline="") as f:
            raw = f.read()
        text = _C.wikitext_joined(raw) if protocol == "gptq" else raw
    if not isinstance(text, str):
        raise Error(f"perplexity: text must be a str, a path or 'wikitext2', got {type(text).__name__}")
    return _C.evaluate_perplexity(model, tokenizer, text, protocol, int(seqlen or 0), int(max_windows or 0),
                                  int(batch), bool(progress))


def speed(model: Model, prompt_tokens: int = 256, new_tokens: int = 512, warmup: int = 8, seed: int = 0) -> dict:
    """Decoding speed and memory at batch 1 (paper 2's Table 8): random prompt ids, greedy, EOS
    ignored, a warm-up first. Returns weight_bytes, head_q8_bytes (the LM head's exact Q8_0 copy that
    decoding reads, held beside the weights; 0 when none), prefill_seconds, decode_seconds,
    decode_tokens_per_second and peak memory (peak_host_bytes on the CPU, peak_device_allocated /
    peak_device_reserved on CUDA; -1 where not measured)."""
    return _C.measure_speed(model, int(prompt_tokens), int(new_tokens), int(warmup), int(seed))


random_calibration_windows = _C.random_calibration_windows

_C.Hooks.add_plain = _C.Hooks.add
Hooks.add = _hooks_add

__all__ = ["Error", "Hooks", "Model", "Tokenizer", "load_model", "load_tokenizer", "encode_batch",
           "dequantize_gguf", "cuda_built", "GGML_TYPES", "quant", "run", "report", "attach", "load_task",
           "perplexity", "speed", "random_calibration_windows",
           "__version__"]

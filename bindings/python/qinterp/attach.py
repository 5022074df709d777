"""qinterp.attach(model, {hook: [accumulators]}): feed analyses from a model's hook points, on a
qinterp model or on a Hugging Face transformers model (bitsandbytes-quantized ones included).

    with qinterp.attach(model, {"blocks.2.mlp.hook_act": [dead, corr]}):
        model(ids, attention_mask=mask)            # or qinterp's model.forward(ids, mask)

TransformerLens-style names map onto the transformers modules (model.model.layers[L]):
  blocks.L.hook_resid_pre   input of layers[L]                blocks.L.hook_resid_post  its output
  blocks.L.attn.hook_out    output of self_attn (after o_proj)
  blocks.L.hook_resid_mid   input of the MLP's norm (post_attention_layernorm)
  blocks.L.mlp.hook_pre     input of act_fn (activation_fn)   blocks.L.mlp.hook_act    its output
  blocks.L.mlp.hook_post    input of down_proj (fc2)          hook_logits              lm_head's output
Each accumulator's update(activation, mask) is called with the token mask (the attention_mask the
model was called with; all ones without one), so padding is left out.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Union

import torch

__all__ = ["attach", "Attachment", "hf_module"]

_NAME = re.compile(r"^blocks\.(0|[1-9][0-9]*)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|attn\.hook_out|"
                   r"mlp\.hook_pre|mlp\.hook_act|mlp\.hook_post)$")


class Attachment:
    """Handles of attached hooks; detach() (or leaving the with-block) removes them."""

    def __init__(self, remove):
        self._remove = remove

    def detach(self):
        for r in self._remove:
            r()
        self._remove = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


def _decoder_layers(model):
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for p in path.split("."):
                obj = getattr(obj, p)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"attach: cannot find the decoder layers of {type(model).__name__}")


def hf_module(model, name: str):
    """(module, 'input' | 'output') that carries a hook point in a transformers model."""
    if name == "hook_logits":
        return model.lm_head, "output"
    m = _NAME.match(name)
    if not m:
        from . import Error
        raise Error(f"attach: '{name}' is not a hook point name (blocks.L.mlp.hook_act, ...)")
    layers = _decoder_layers(model)
    L, point = int(m.group(1)), m.group(2)
    if L >= len(layers):
        from . import Error
        raise Error(f"attach: hook point '{name}' names layer {L} but the model has {len(layers)} layers")
    layer = layers[L]
    mlp = getattr(layer, "mlp")
    act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn")
    down = getattr(mlp, "down_proj", None) or getattr(mlp, "fc2")
    table = {"hook_resid_pre": (layer, "input"), "hook_resid_post": (layer, "output"),
             "attn.hook_out": (layer.self_attn, "output"), "hook_resid_mid": (layer.post_attention_layernorm, "input"),
             "mlp.hook_pre": (act, "input"), "mlp.hook_act": (act, "output"), "mlp.hook_post": (down, "input")}
    return table[point]


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def attach(model, hooks: Dict[str, Union[object, Iterable[object]]]) -> Attachment:
    """Wire accumulators (anything with update(act, mask)) to hook points of a qinterp Model or a
    transformers model; returns an Attachment (a context manager)."""
    spec = {h: (list(a) if isinstance(a, (list, tuple)) else [a]) for h, a in hooks.items()}
    for h, accs in spec.items():
        for a in accs:
            if not callable(getattr(a, "update", None)):
                raise TypeError(f"attach: {type(a).__name__} at '{h}' has no update(act, mask)")
            if hasattr(a, "label") and not a.label:
                a.label = h
    from . import _C
    if isinstance(model, _C.Model):
        handles = []
        for h, accs in spec.items():
            def fn(act, mask, accs=accs):
                for a in accs:
                    a.update(act, mask)
            handles.append(model.hooks.add(h, fn))
        return Attachment([lambda hd=hd: model.hooks.remove(hd) for hd in handles])

    state: Dict[str, torch.Tensor] = {}

    def remember_mask(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None and ids is not None:
            mask = torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
        state["mask"] = None if mask is None else mask.bool()

    removers = [model.register_forward_pre_hook(remember_mask, with_kwargs=True).remove]
    for h, accs in spec.items():
        module, where = hf_module(model, h)

        def feed(act, accs=accs):
            mask = state.get("mask")
            if mask is not None and mask.shape != act.shape[:2]:
                mask = None  # generation steps with a cache: a mask of the whole sequence
            for a in accs:
                a.update(act, mask)

        if where == "output":
            r = module.register_forward_hook(lambda mod, inp, out, feed=feed: feed(_first(out)))
        else:
            r = module.register_forward_pre_hook(lambda mod, inp, feed=feed: feed(_first(inp)))
        removers.append(r.remove)
    return Attachment(removers)

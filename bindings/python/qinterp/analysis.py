"""Streaming neuron analyses (qinterp.analysis) and the HDF5 result store.

Every accumulator takes torch tensors on any device — from a qinterp model's hooks or from a
forward hook on any PyTorch model — and keeps memory that does not grow with the data:

    dead = qinterp.analysis.DeadNeurons()                # band (-0.1, 0.1)
    corr = qinterp.analysis.Correlation()                # |r| histogram, 10 bins
    model.hooks.add("blocks.2.mlp.hook_act", lambda a, m: (dead.update(a, m), corr.update(a, m)) and None)
    model.forward(ids, mask)
    dead.result()["count"], corr.result()["histogram"]

    # any PyTorch model
    hf.model.layers[2].mlp.act_fn.register_forward_hook(lambda mod, i, out: dead.update(out, mask))

update(...) folds a batch in, merge(other) combines shards exactly, state()/restore(state) stop
and resume (ResultStore.save_state / load_state keep it in the HDF5 file), result() returns a
dict: tensors for per-neuron values, plain Python numbers for scalars.
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch

from . import _C
from ._C import (ActivationDump, Calibration, Correlation, DeadNeurons, Drift, NeuronStats, Perplexity,
                 ResultStore, SalientNeurons, State, answer_targets, average_linkage_clusters, ig_quadrature,
                 next_token_targets)

__all__ = ["DeadNeurons", "NeuronStats", "Correlation", "Drift", "Calibration", "Perplexity", "SalientNeurons",
           "IntegratedGradients", "State", "ResultStore", "ActivationDump", "perplexity", "average_linkage_clusters",
           "ig_quadrature", "answer_targets", "next_token_targets"]


def _plain(d: Dict[str, torch.Tensor]) -> Dict[str, Union[torch.Tensor, int, float, bool]]:
    return {k: (v.item() if v.dim() == 0 else v) for k, v in d.items()}


def _result(self) -> Dict[str, Union[torch.Tensor, int, float, bool]]:
    """The finalized result: per-neuron tensors, and Python numbers for scalars."""
    return _plain(self.finalize())


for _cls in (DeadNeurons, NeuronStats, Correlation, Drift, Calibration, Perplexity, SalientNeurons):
    _cls.result = _result


class IntegratedGradients:
    """Integrated gradients on hooked activations, as Captum's LayerIntegratedGradients computes
    them (same points, weights, baseline and target), layer-aware and in bounded memory.

        ig = IntegratedGradients(model, "blocks.2.mlp.hook_act")            # one hook
        attr, delta = ig.attribute(ids, target=token_id)                     # attr [T, width] float32
        ig = IntegratedGradients(model, ["blocks.0.mlp.hook_act", "blocks.4.mlp.hook_act"])
        by_hook = ig.attribute(ids, target)                                  # {hook: (attr, delta)}
        ig.attribute(ids, [t0, t1])                                          # a list: one result per target

    ids: [T] or [1, T] token ids of one example. target: the token whose log-probability at the last
    position is attributed; a list attributes each in turn with the earlier ones appended (the
    authors' llm_attr). delta is Captum's convergence delta, sum(attr) - (f(ids) - f(baseline ids)),
    which for a layer does not vanish; attribute_full() also gives the completeness gap that does,
    sum(attr) - (f(ids) - f(ids with only the hooked activation at its baseline)).

    baseline: None (the hooked activation on the ids with every token replaced by baseline_id),
    "zeros", or a tensor [P, width] (a dict hook -> tensor for several hooks). method: gausslegendre,
    riemann_left, riemann_right, riemann_middle, riemann_trapezoid. internal_batch_size: steps per
    forward/backward (None: as many as fit in memory_budget bytes of saved activations).
    The model's own hooks (model.hooks) do not run during attribution.
    """

    def __init__(self, model, hooks, n_steps: int = 50, method: str = "gausslegendre", baseline_id: int = 0,
                 internal_batch_size: Optional[int] = None, baseline=None, memory_budget: int = 1 << 30,
                 completeness: bool = True):
        self._single = isinstance(hooks, str)
        self.hooks = [hooks] if self._single else list(hooks)
        acts = {}
        if baseline is None or (isinstance(baseline, str) and baseline == "token"):
            kind = "token"
        elif isinstance(baseline, str) and baseline == "zeros":
            kind = "zeros"
        elif isinstance(baseline, torch.Tensor):
            if len(self.hooks) != 1:
                raise _C.Error("IntegratedGradients: a baseline tensor for several hooks must be a dict hook -> tensor")
            kind, acts = "tensor", {self.hooks[0]: baseline}
        elif isinstance(baseline, dict):
            kind, acts = "tensor", dict(baseline)
        else:
            raise _C.Error(f"IntegratedGradients: baseline must be None, 'zeros', a tensor or a dict, got {baseline!r}")
        if internal_batch_size is not None and int(internal_batch_size) < 1:
            raise _C.Error(f"IntegratedGradients: internal_batch_size must be >= 1 or None, got {internal_batch_size}")
        self._ig = _C.IntegratedGradients(model, self.hooks, int(n_steps), str(method), kind, int(baseline_id), acts,
                                          int(internal_batch_size or 0), int(memory_budget), bool(completeness))

    def _run(self, ids, target):
        many = not isinstance(target, int) and not (isinstance(target, torch.Tensor) and target.dim() == 0)
        targets = [int(t) for t in (target.tolist() if isinstance(target, torch.Tensor) else target)] if many \
            else [int(target)]
        return many, self._ig.attribute_all(torch.as_tensor(ids), targets)

    def attribute(self, ids, target):
        """(attributions, delta) for one hook, {hook: (attributions, delta)} for several; a list of
        those when target is a list."""
        many, rs = self._run(ids, target)
        out = []
        for r in rs:
            pairs = {h: (v["attributions"], v["delta"]) for h, v in r.items()}
            out.append(pairs[self.hooks[0]] if self._single else pairs)
        return out if many else out[0]

    def attribute_full(self, ids, target):
        """Like attribute(), with a dict per hook: attributions, delta, completeness_gap, f_input,
        f_baseline, f_hook_baseline, sum."""
        many, rs = self._run(ids, target)
        out = [r[self.hooks[0]] if self._single else r for r in rs]
        return out if many else out[0]

    def chunk_steps(self, hook: str, positions: int) -> int:
        """Steps per forward/backward for a prompt of `positions` tokens."""
        return self._ig.chunk_steps(hook, int(positions))


def perplexity(model, ids: torch.Tensor, context: int, stride: Optional[int] = None, progress: bool = False):
    """Sliding-window perplexity of a 1-D token stream (Hugging Face's recipe): windows of
    `context` tokens every `stride` (default: context, i.e. no overlap). With stride < context
    every token after the first is scored once; with stride == context the first token of each
    window is not scored. Returns {tokens, nll, mean_nll, perplexity}."""
    ids = torch.as_tensor(ids)
    if ids.dim() == 2 and ids.size(0) == 1:
        ids = ids[0]
    return _plain(_C.perplexity(model, ids, int(context), int(stride or context), bool(progress)))


def _write_result(self, group: str, result: Dict[str, Union[torch.Tensor, int, float, bool]]) -> None:
    """Write a result dict (from .result() or .finalize()) as one dataset per entry."""
    if not isinstance(result, dict):
        raise _C.Error(f"ResultStore.write_result: expected a dict of results, got {type(result).__name__}")
    ts = {}
    for k, v in result.items():
        if isinstance(v, torch.Tensor):
            ts[k] = v
        elif isinstance(v, bool):
            ts[k] = torch.tensor(v)
        elif isinstance(v, int):
            if not -2**63 <= v < 2**63:
                raise _C.Error(f"ResultStore.write_result: '{k}' = {v} does not fit in int64")
            ts[k] = torch.tensor(v, dtype=torch.int64)
        elif isinstance(v, float):
            ts[k] = torch.tensor(v, dtype=torch.float64)
        else:
            raise _C.Error(f"ResultStore.write_result: '{k}' is a {type(v).__name__}; results are tensors, "
                           f"ints, floats or bools")
    self.write_tensors(group, ts)


def _read_result(self, group: str):
    """A result group back as a dict (scalars as Python numbers)."""
    return _plain(self.read_tensors(group))


def _save(self, group: str, acc, attrs: Optional[dict] = None) -> None:
    """Save an accumulator's state (or a State) under `group`, with optional attributes
    (e.g. {"examples_done": 1200}) for resuming."""
    if not isinstance(acc, State) and not callable(getattr(acc, "state", None)):
        raise TypeError(f"ResultStore.save: expected an accumulator or a State, got {type(acc).__name__}")
    st = acc if isinstance(acc, State) else acc.state()
    self.save_state(group, st, attrs or {})


ResultStore.write_result = _write_result
ResultStore.read_result = _read_result
ResultStore.save = _save
ResultStore.__enter__ = lambda self: self
ResultStore.__exit__ = lambda self, *exc: self.close()

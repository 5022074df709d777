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
                 ResultStore, State, average_linkage_clusters)

__all__ = ["DeadNeurons", "NeuronStats", "Correlation", "Drift", "Calibration", "Perplexity", "State",
           "ResultStore", "ActivationDump", "perplexity", "average_linkage_clusters"]


def _plain(d: Dict[str, torch.Tensor]) -> Dict[str, Union[torch.Tensor, int, float, bool]]:
    return {k: (v.item() if v.dim() == 0 else v) for k, v in d.items()}


def _result(self) -> Dict[str, Union[torch.Tensor, int, float, bool]]:
    """The finalized result: per-neuron tensors, and Python numbers for scalars."""
    return _plain(self.finalize())


for _cls in (DeadNeurons, NeuronStats, Correlation, Drift, Calibration, Perplexity):
    _cls.result = _result


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
    ts = {}
    for k, v in result.items():
        if isinstance(v, torch.Tensor):
            ts[k] = v
        elif isinstance(v, bool):
            ts[k] = torch.tensor(v)
        elif isinstance(v, int):
            ts[k] = torch.tensor(v, dtype=torch.int64)
        else:
            ts[k] = torch.tensor(float(v), dtype=torch.float64)
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

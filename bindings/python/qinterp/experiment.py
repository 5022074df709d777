"""The main job from Python: qinterp.run(...) mirrors `qinterp run`, qinterp.report(...) mirrors
`qinterp report`. Under torchrun the run is data-parallel (qinterp._distributed)."""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Callable, Dict, Optional, Sequence, Union

from . import _C
from ._distributed import comm, world

__all__ = ["run", "report", "load_task", "default_data_dir"]


def default_data_dir() -> str:
    """$QINTERP_DATA, else the first shared/datasets/paper1 found beside the working directory or
    one of its parents (the checkout's ../shared), else ../shared/datasets/paper1."""
    env = os.environ.get("QINTERP_DATA")
    if env:
        return env
    here = pathlib.Path.cwd().resolve()
    for d in [here, *here.parents]:
        cand = d / "shared" / "datasets" / "paper1"
        if cand.is_dir():
            return str(cand)
    return "../shared/datasets/paper1"


def load_task(name: str, data: Optional[str] = None, prompt_template: str = "", labels: Sequence[str] = (),
              prompt_column: str = "prompt", gold_column: str = "gold"):
    """A built-in task (boolq, piqa, hellaswag, toxicity) or a CSV path (RFC 4180; quoted fields may
    hold commas and newlines). prompt_template: "{}" marks where the prompt goes."""
    return _C.load_task(name, data or default_data_dir(), prompt_template, list(labels), prompt_column, gold_column)


def _as_list(v):
    if v is None:
        return None
    return [v] if isinstance(v, (str, int)) else list(v)


def run(model: Union[str, os.PathLike], quant: Union[str, Sequence[str]] = ("fp32", "int8", "nf4"),
        task: Union[str, Sequence[str]] = ("boolq",), out: Union[str, os.PathLike] = "results/run.h5", *,
        tokenizer: Optional[str] = None, name: Optional[str] = None, data: Optional[str] = None,
        analyses: Union[str, Sequence[str]] = "all", layers: Optional[Sequence[int]] = None, mode: str = "clean",
        scoring: str = "paper", chat: str = "none", limit: int = 0, ig_limit: Optional[int] = None, batch: int = 32,
        ig_steps: int = 50, ig_method: str = "gausslegendre", ig_target: Optional[str] = None, device: str = "cpu",
        seed: int = 42, checkpoint_seconds: float = 60, restart: bool = False, template: Optional[str] = None,
        labels: Optional[Sequence[str]] = None, prompt_column: str = "prompt", gold_column: str = "gold",
        progress: Union[bool, Callable] = True) -> Dict[str, object]:
    """Run the paper's protocol (see `qinterp run --help` and docs/runner.md); returns
    {out, stages_run, stages_skipped, dropped} (dropped: paths of unreadable copies that killed runs
    left, removed at the end). progress: True prints rate and ETA to stderr, a callable
    receives each ProgressEvent, False is silent. Inside torchrun the examples are split over the
    processes and rank 0 writes the file."""
    import torch
    torch.manual_seed(seed)
    opts = dict(model=os.fspath(model), quant=_as_list(quant), task=_as_list(task), out=os.fspath(out),
                tokenizer=os.fspath(tokenizer) if tokenizer else None, name=name, data=data or default_data_dir(),
                analyses=[a.strip() for a in analyses.split(",")] if isinstance(analyses, str) else list(analyses),
                layers=_as_list(layers), mode=mode, scoring=scoring, chat=chat, limit=int(limit),
                ig_limit=None if ig_limit is None else int(ig_limit), batch=int(batch), ig_steps=int(ig_steps),
                ig_method=ig_method, ig_target=ig_target, device=device, seed=int(seed),
                checkpoint_seconds=float(checkpoint_seconds), restart=bool(restart), template=template,
                labels=_as_list(labels), prompt_column=prompt_column, gold_column=gold_column)
    cb = None
    if progress is True:
        meter = _C.ProgressMeter(sys.stderr.isatty())

        def cb(e):
            s = meter.update(e)
            if s:
                sys.stderr.write(s)
                sys.stderr.flush()
    elif callable(progress):
        cb = progress
    rank, size = world()
    return _C.run(opts, cb, rank, size, comm(device) if size > 1 else None)


def report(path: Union[str, os.PathLike], out: Optional[str] = None, latex: bool = False, figures: bool = False) -> str:
    """The paper's tables from a run's file, as Markdown; with `out`, also report.md, CSV (and
    LaTeX) tables there, and with figures=True the PNG figures (qinterp.plots)."""
    if figures and not out:
        raise _C.Error("report: figures=True needs out=DIR for the images")
    md, _ = _C.make_report(os.fspath(path), os.fspath(out) if out else "", bool(latex))
    if figures:
        from . import plots
        plots.draw_all(os.fspath(path), os.fspath(out))
    return md

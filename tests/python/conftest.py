"""Shared fixtures for the Python tests: paths to ../shared and the model cache."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
STORIES = SHARED / "fixtures" / "stories260K"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def stories_model():
    import qinterp
    return qinterp.load_model(STORIES / "stories260K.bin")


@pytest.fixture(scope="session")
def stories_tok():
    import qinterp
    return qinterp.load_tokenizer(STORIES / "tok512.bin")


def reference_logits():
    """[5, 512] logits for "Once upon a time" from llama2.c's run.c."""
    import torch
    rows = []
    for line in (STORIES / "logits_once_upon_a_time.txt").read_text().splitlines():
        if line.startswith("logits "):
            rows.append([float(x) for x in line.split()[1:]])
    return torch.tensor(rows)


def hooked_gradient(model, hook, ids, target):
    """Gradient of target(logits) with respect to the activation at `hook`, made a leaf there."""
    box = {}

    def leaf(act, mask):
        box["a"] = act.detach().requires_grad_(True)
        return box["a"]

    h = model.hooks.add(hook, leaf)
    try:
        target(model.forward(ids)).backward()
    finally:
        model.hooks.remove(h)
    return box["a"].grad

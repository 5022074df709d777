"""Every fenced example in README.md and docs/*.md marked `<!-- runnable -->` runs as written,
from the checkout's root (../shared beside it), with build/qinterp as `qinterp`."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT

BLOCK = re.compile(r"<!-- runnable -->\s*\n```(python|sh)\n(.*?)\n```", re.S)


def examples():
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(BLOCK.finditer(md.read_text())):
            yield pytest.param(m.group(1), m.group(2), id=f"{md.name}-{i}")


@pytest.mark.parametrize("lang, code", list(examples()))
def test_example_runs(lang, code):
    env = dict(os.environ, PATH=f"{ROOT / 'build'}:{os.environ['PATH']}",
               PYTHONPATH=str(ROOT / "build" / "python"), QINTERP_PYTHON=sys.executable)
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{lang} example failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"


def test_there_are_runnable_examples():
    assert len(list(examples())) >= 5

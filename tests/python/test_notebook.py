"""examples/notebooks/quickstart.ipynb runs top to bottom (nbclient, a fresh kernel)."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT, SHARED


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(ROOT / "examples" / "notebooks" / "quickstart.ipynb", as_version=4)
    os.environ["QINTERP_SHARED"] = str(SHARED)
    # the kernel starts in the notebook's folder: relative entries would point elsewhere
    os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "examples" / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "# qinterp report" in text and "Once upon a time" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)

"""examples/quickstart.ipynb: committed without outputs, and it runs top to bottom on the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the quickstart has code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), \
        "examples/quickstart.ipynb has outputs; fix: clear them before committing (jupyter nbconvert --clear-output)"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the figures show inline"
    assert (tmp_path / "runs" / "quickstart" / "report" / "report.html").is_file()
    text = "".join(o.get("text", "") for o in outputs)
    assert "knowledge unchanged" in text

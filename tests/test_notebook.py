"""walkthrough.ipynb runs from top to bottom (shortened by its QUICK parameter) and is kept without outputs."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "walkthrough.ipynb"


def test_the_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])


@pytest.mark.slow
def test_the_walkthrough_executes(tmp_path):
    """Breaks caught: any step raising (an API the notebook uses renamed or changed), the gradient
    check or the overfitting assertion failing, the attention figure not drawn."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = (f"QUICK = True\nimport os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                                f"os.chdir({str(tmp_path)!r})")
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert text.count("relative error") == 6
    assert "predicted:" in text and "val loss per epoch" in text
    # every plot cell shows a picture (break caught: the loss plot printed `<Figure size 600x350 with
    # 1 Axes>`, a text-only result that counted as a plot)
    plots = [c for c in notebook.cells if c.cell_type == "code" and "def show" not in c.source
             and ("show(fig)" in c.source or "display(Image(" in c.source)]
    assert len(plots) == 2  # the loss plot and the attention map
    for cell in plots:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source
    assert (tmp_path / "outputs" / "walkthrough_attention.png").stat().st_size > 10_000

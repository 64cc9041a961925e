"""Execute every notebook in notebooks/ end to end, so none can rot; each one's computed
conclusion is checked (`EXPECT`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# notebook -> patterns its executed output must contain (its conclusion, computed)
EXPECT: dict[str, list[str]] = {
    "what_if.ipynb": [
        r"instances: fastest policy is \w+",
        # the chunk sweep's optimum lies inside the range it tries, for each chunked policy
        r"\(a\) divided: best chunk_tokens = \d+, inside the tried range",
        r"\(a\) context_aware: best chunk_tokens = \d+, inside the tried range",
    ],
    "capacity_planning.ipynb": [
        r"plan: cheapest configuration meeting [\d.]+ s is cluster\.instances=\d+",
        r"plan agrees with the brute-force sweep: True \((\d+) simulations instead of 16\)",
    ],
}

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed, so no python3 kernel can run the notebook")


def _ensure_python3_kernel() -> None:
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" in find_kernel_specs():
        return
    try:
        from ipykernel.kernelspec import install

        install(user=True)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"no 'python3' Jupyter kernel found and installing one failed: {exc}")
    if "python3" not in find_kernel_specs():  # pragma: no cover
        pytest.skip("no 'python3' Jupyter kernel found even after `ipykernel install --user`")


def _output_text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "")


def test_the_shipped_notebooks_are_all_checked():
    assert {"what_if.ipynb", "capacity_planning.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(notebook):
    _ensure_python3_kernel()
    nb = nbformat.read(notebook, as_version=4)
    # stored without outputs (keeps diffs reviewable)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"store notebooks/{notebook.name} without outputs"
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, "\n".join(f"{e.get('ename')}: {e.get('evalue')}" for e in errors)
    text = "\n".join(_output_text(o) for o in outputs)
    assert re.search(r"\d+\.\d+", text), "no numeric output in the executed notebook"
    for pattern in EXPECT.get(notebook.name, []):
        assert re.search(pattern, text), f"{notebook.name}: no output matches {pattern!r}\n{text[-2000:]}"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was rendered"

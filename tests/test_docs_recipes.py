"""Run the ```python blocks of docs/extending.md, so the extension recipes cannot rot.

The blocks run in order, in one namespace (a later recipe may use names an earlier one
defined), with `REPO` bound to the repository root and the working directory a fresh
temporary folder (recipes that write files write them there).
"""

from __future__ import annotations

import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_doc_has_every_recipe():
    text = DOC.read_text()
    for heading in ("## Add a policy", "## Add a GPU or model", "## Add a trace format", "## Add a cost model"):
        assert heading in text, f"docs/extending.md lacks the section '{heading}'"
    assert len(python_blocks(text)) >= 5


def test_doc_recipes_run(tmp_path, monkeypatch):
    from seersim.policies import REGISTRY
    from seersim.specs import GPUS, MODELS

    monkeypatch.chdir(tmp_path)
    before = (dict(REGISTRY), dict(GPUS), dict(MODELS))
    namespace: dict = {"__name__": "extending_md", "REPO": REPO}
    try:
        for lineno, code in python_blocks(DOC.read_text()):
            compiled = compile(code, f"{DOC}:block@line{lineno}", "exec")
            try:
                exec(compiled, namespace)
            except Exception as exc:
                raise AssertionError(f"docs/extending.md python block at line {lineno} failed: {exc!r}") from exc
    finally:
        after = (dict(REGISTRY), dict(GPUS), dict(MODELS))
        # recipes must clean up what they register, whatever happened
        for catalog, saved in zip((REGISTRY, GPUS, MODELS), before):
            catalog.clear()
            catalog.update(saved)
    assert after == before, "a recipe left an entry in REGISTRY / GPUS / MODELS"

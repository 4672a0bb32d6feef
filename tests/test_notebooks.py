"""Every notebook in notebooks/ runs top to bottom (its own asserts check its results), and the copy in the
repository carries outputs of the same kinds as a fresh run (refresh with scripts/refresh_notebooks.py)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("refresh_notebooks", ROOT / "scripts" / "refresh_notebooks.py")
refresh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refresh)


def output_kinds(notebook) -> list[list[str]]:
    """Per code cell, the kinds of its outputs: stream names, MIME types of rich outputs, errors."""
    kinds = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell_kinds = set()
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                cell_kinds.add(out["name"])
            elif out["output_type"] == "error":
                cell_kinds.add("error")
            else:
                cell_kinds.update(k for k in out["data"] if k.startswith("image/") or k == "text/plain")
        kinds.append(sorted(cell_kinds - {"stderr"}))  # warnings may differ between machines
    return kinds


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_and_its_stored_outputs_are_current(path):
    fresh = refresh.execute(path)
    errors = [o for cell in fresh.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    stored = nbformat.read(path, as_version=4)
    assert output_kinds(stored) == output_kinds(fresh), (
        f"{path.name}: stored outputs are stale; run python scripts/refresh_notebooks.py {path.name}")

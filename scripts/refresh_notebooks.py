"""Run the notebooks top to bottom and store them with their outputs, so their figures show on GitHub.

    python scripts/refresh_notebooks.py                  # every notebook in notebooks/
    python scripts/refresh_notebooks.py judges.ipynb     # just these

tests/test_notebooks.py runs the same `execute` and checks the stored outputs are of the same kinds
(a figure where a figure is drawn), so a notebook edited without a refresh fails the suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path` after running every cell in its own directory (no timing metadata)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names in notebooks/ (default: all)")
    names = parser.parse_args(argv).names
    paths = [NOTEBOOKS / name for name in names] if names else sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        nbformat.write(execute(path), path)


if __name__ == "__main__":
    main()

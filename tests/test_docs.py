"""Every docs/*.md page's ```python blocks run, concatenated, from the repo root (their asserts check them).

Blocks fenced as ```python-skip, ```bash or anything else are not run; a page without a python block fails,
except the index docs/README.md.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```\s*(\S*)\s*$")


def python_source(page: Path) -> str:
    """The page's ```python blocks; every other line blanked, so tracebacks give the page's line numbers."""
    lines, language = [], None
    for line in page.read_text().splitlines():
        fence = FENCE.match(line)
        if fence:
            language = fence.group(1) if language is None else None
            lines.append("")
        else:
            lines.append(line if language == "python" else "")
    return "\n".join(lines)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples_run(page, monkeypatch):
    source = python_source(page)
    if page.name == "README.md" and not source.strip():
        return
    assert source.strip(), f"{page.name} has no ```python block"
    monkeypatch.chdir(ROOT)
    exec(compile(source, str(page), "exec"), {"__name__": f"docs.{page.stem}"})

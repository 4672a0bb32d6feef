"""What every benchmark does last: write its figures as JSON beside the printed table."""

import json
from pathlib import Path


def write_json(path: str | Path, result: dict) -> Path:
    """Write `result` to `path` (parents created), indented, and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out

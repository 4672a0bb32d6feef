"""What benchmarks share: timing a jitted call, and writing the figures as JSON beside the printed table."""

import json
import time
from pathlib import Path

import jax


def timed(fn, *args) -> float:
    """Seconds `fn(*args)` takes, its results computed (JAX dispatches asynchronously)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def write_json(path: str | Path, result: dict) -> Path:
    """Write `result` to `path` (parents created), indented, and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out

"""The README's quickstart runs as written (it is the front door: keep it true)."""

import os
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]


def test_quickstart_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", readme, re.S).group(1)
    cwd, namespace = os.getcwd(), {}
    os.chdir(ROOT)  # the snippet loads models/shipped by relative path
    try:
        exec(compile(code, "README.md quickstart", "exec"), namespace)
    finally:
        os.chdir(cwd)
    result = namespace["result"]
    assert np.isfinite(float(result.log_evidence))
    assert np.isclose(float(np.sum(result.normalized_weights)), 1.0, atol=1e-5)
    assert np.all((np.asarray(result.ess) > 0) & (np.asarray(result.ess) <= 16 + 1e-3))

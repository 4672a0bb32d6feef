"""Load the models a command runs with: the shipped pair by default, or local checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped"


def load_models(lm_path: str | None = None, prm: str = "learned", prm_path: str | None = None) -> tuple[Any, Any, Any]:
    """(lm, tokenizer, prm): `prm` is "learned" (a model PRM) or "oracle" (the task's exact verifier)."""
    import models
    from models.prm import load_prm

    lm, tokenizer = models.load(lm_path or SHIPPED / "lm")
    if prm == "oracle":
        return lm, tokenizer, "oracle"
    judge, _ = load_prm(prm_path or SHIPPED / "prm")
    return lm, tokenizer, judge

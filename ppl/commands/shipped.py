"""Load the models a command runs with: the shipped pair by default, or local checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppl.errors import InputError
from ppl.tasks import Task

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped"
PRM_KINDS = ("learned", "oracle")


def load_models(
    task: Task, prm: str = "learned", lm_path: str | None = None, prm_path: str | None = None
) -> tuple[Any, Any, Any]:
    """(lm, tokenizer, judge) for `task`: the judge is a model PRM (`prm="learned"`) or the task's
    exact verifier (`prm="oracle"`)."""
    import models
    from models.prm import load_prm

    if prm not in PRM_KINDS:
        raise InputError(f"prm must be one of {', '.join(PRM_KINDS)}, got {prm!r}")
    if prm == "oracle" and task.verifier is None:
        raise InputError(f"task {task.name!r} has no exact verifier; use a learned PRM")
    lm, tokenizer = models.load(lm_path or SHIPPED / "lm")
    if prm == "oracle":
        return lm, tokenizer, task.verifier
    judge, _ = load_prm(prm_path or SHIPPED / "prm")
    return lm, tokenizer, judge

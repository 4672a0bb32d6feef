"""Tasks: each module defines one `Task` (`ppl.tasks.task`); `TASKS` is the registry.

Adding a task is one module here that defines `TASK` and one line below.
"""

from ppl.tasks import arithmetic, countdown
from ppl.tasks.task import EVAL_SEED, Task, Training, Verifier

TASKS: dict[str, Task] = {
    countdown.TASK.name: countdown.TASK,
    arithmetic.TASK.name: arithmetic.TASK,
}

__all__ = ["EVAL_SEED", "TASKS", "Task", "Training", "Verifier"]

"""scripts/multihost_countdown.py under jax.distributed: two CPU processes of two devices each run
Countdown pf over the four devices (particles across the processes, each model's weights split over a
process's two devices) and write what one process on one device writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ppl.commands.shipped import load_models
from ppl.search import SearchSpec
from ppl.solver import Solver
from ppl.tasks import TASKS, countdown

ROOT = Path(__file__).parents[1]
PROBLEM = {"numbers": [8, 5, 13, 8], "target": 33}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    out = tmp_path / "out.jsonl"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "multihost_countdown.py"), "--coordinator", f"localhost:{port}",
             "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "2", "--problems", str(problems),
             "--particles", "4", "--model", "2", "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), logs[0][-2000:] + logs[1][-2000:]
    assert "2 processes, 4 devices (model x2), 4 particles" in logs[0]
    [distributed] = [json.loads(line) for line in out.read_text().splitlines()]

    solver = Solver(TASKS["countdown"], *load_models(TASKS["countdown"]))
    [single] = solver.solve(countdown.read_problems(problems), SearchSpec("pf", 4))
    assert distributed["steps"] == single["steps"]
    assert abs(distributed["confidence"] - single["confidence"]) < 1e-4

"""End to end on the shipped models: the solve command and the solver's bookkeeping."""

import json

import pytest

from ppl.cli import main
from ppl.commands.shipped import SHIPPED
from ppl.tasks import countdown

pytestmark = pytest.mark.skipif(not (SHIPPED / "lm" / "model.safetensors").exists(), reason="no shipped model")

PROBLEMS = [countdown.Problem((3, 7, 12, 25), 34), *countdown.generate(1000, 1)]


@pytest.mark.parametrize("method", [["pf"], ["epf", "--schedule", "entropy", "--lookahead"], ["pg"]])
def test_countdown_solve_writes_the_contract_fields(tmp_path, capsys, method):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"numbers": list(p.numbers), "target": p.target}) + "\n" for p in PROBLEMS))
    out = tmp_path / "out.jsonl"
    code = main(["countdown", "solve", "--problems", str(path), "--method", *method, "--particles", "4",
                 "--prm", "oracle", "--out", str(out)])
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(PROBLEMS)
    for line, problem in zip(lines, PROBLEMS, strict=True):
        assert line["numbers"] == list(problem.numbers) and line["target"] == problem.target
        assert isinstance(line["steps"], list) and all(isinstance(s, str) for s in line["steps"])
        assert line["correct"] == countdown.verify(problem, line["steps"])
        assert line["tokens"] >= len("".join(line["steps"])) // 4 > 0
        assert 0.0 <= line["confidence"] <= 1.0
        assert line["method"] == method[0] and line["particles"] == 4
    assert "accuracy" in capsys.readouterr().out

"""The training data of the shipped LM (`models.train`): task shares and what the loss sees."""

import numpy as np
import pytest

from models.tokenizer import build_tokenizer
from models.train import lm_batches, main, mixed
from ppl.tasks import countdown


@pytest.mark.parametrize("share, task", [(1.0, "countdown"), (0.0, "arithmetic")])
def test_countdown_share_sets_the_task_of_every_problem(share, task):
    assert {p.task for p in mixed(np.random.default_rng(0), 64, share)} == {task}


def test_an_even_share_draws_both_tasks():
    tasks = [p.task for p in mixed(np.random.default_rng(0), 400)]
    assert 150 < tasks.count("countdown") < 250


def test_the_loss_covers_exactly_a_solution_and_eos():
    tok = build_tokenizer()
    ids, mask, loss = next(lm_batches(tok, np.random.default_rng(1), 8, countdown_share=1.0))
    for row in range(8):
        text = tok.decode(ids[row][mask[row]], skip_special_tokens=True)
        head, trace = text.split("\n", 1)
        numbers, target = head.removeprefix("countdown ").split(" -> ")
        problem = countdown.Problem(tuple(map(int, numbers.split())), int(target))
        assert countdown.verify(problem, trace.splitlines())
        trained = ids[row][loss[row] > 0]
        assert tok.decode(trained[:-1]) == trace and trained[-1] == tok.eos_token_id


def test_a_share_outside_zero_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--countdown-share", "1.5"])
    assert "--countdown-share must lie in [0, 1]" in capsys.readouterr().err

"""The training data of the shipped LM (`models.train`): task shares and what the loss sees."""

import numpy as np
import pytest

from models.llama import Config, random_init
from models.tokenizer import build_tokenizer
from models.train import lm_batches, lm_loss, main, mixed, train
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


@pytest.mark.parametrize("steps", [1, 3])
def test_training_runs_any_number_of_steps(steps):
    tok = build_tokenizer()
    config = Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8, max_position_embeddings=128)
    batches = lm_batches(tok, np.random.default_rng(0), 2)
    _, loss = train(random_init(config, seed=0), lm_loss, batches, steps, 1e-3, log_every=1, name="lm")
    assert np.isfinite(loss)

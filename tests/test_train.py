"""The training data of the shipped LM (`ppl.train`): task shares and what the loss sees."""

import itertools

import numpy as np
import pytest

from models.llama import Config, random_init
from ppl.tasks import countdown
from ppl.train import build_tokenizer, lm_batches, lm_loss, main, mixed, train


@pytest.mark.parametrize("share, task", [(1.0, "countdown"), (0.0, "arithmetic")])
def test_countdown_share_sets_the_task_of_every_problem(share, task):
    assert {p.task.name for p in mixed(np.random.default_rng(0), 64, share)} == {task}


def test_an_even_share_draws_both_tasks():
    tasks = [p.task.name for p in mixed(np.random.default_rng(0), 400)]
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


def test_training_steps_follow_the_schedule():
    """One step is all warmup at learning rate 0: the model comes back unchanged and the loss is
    the initial one. Three steps on one repeated batch lower it."""
    tok = build_tokenizer()
    config = Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8, max_position_embeddings=128)
    batch = next(lm_batches(tok, np.random.default_rng(0), 4))
    initial = float(lm_loss(random_init(config, seed=0), *batch))
    model, loss = train(random_init(config, seed=0), lm_loss, itertools.repeat(batch), 1, 1e-2, log_every=1, name="lm")
    np.testing.assert_array_equal(model.lm_head.kernel[...], random_init(config, seed=0).lm_head.kernel[...])
    assert loss == pytest.approx(initial, rel=1e-6)
    model, _ = train(random_init(config, seed=0), lm_loss, itertools.repeat(batch), 3, 1e-2, log_every=1, name="lm")
    assert float(lm_loss(model, *batch)) < initial - 0.01

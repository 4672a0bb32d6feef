"""The training data of the shipped LM (`ppl.train`): task shares and what the loss sees."""

import itertools

import numpy as np
import pytest

import ppl.train
from models.llama import Config, random_init
from ppl.errors import InputError
from ppl.tasks import TASKS, countdown
from ppl.train import (
    Scored,
    build_tokenizer,
    corrupted_batches,
    joined,
    lm_batches,
    lm_loss,
    main,
    mixed,
    prm_arrays,
    prm_examples,
    train,
)


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


@pytest.mark.parametrize("flag", ["--countdown-share", "--prm-stream-countdown-share"])
def test_a_share_outside_zero_one_is_refused(capsys, flag):
    with pytest.raises(SystemExit):
        main([flag, "1.5"])
    assert f"{flag} must lie in [0, 1]" in capsys.readouterr().err


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
    logged = []
    model, _ = train(random_init(config, seed=0), lm_loss, itertools.repeat(batch), 3, 1e-2, log_every=2, name="lm",
                     on_log=lambda step, m: logged.append((step, float(lm_loss(m, *batch)))))
    assert float(lm_loss(model, *batch)) < initial - 0.01
    assert [step for step, _ in logged] == [2, 3] and logged[-1][1] == pytest.approx(float(lm_loss(model, *batch)))


def test_balanced_weights_give_each_class_half_of_a_task():
    examples = [
        Scored("arithmetic", [1, 2, 3], [1, 2], [1, 0], "sampled"),
        Scored("arithmetic", [1, 2, 3, 4], [1, 2, 3], [0, 0, 0], "sampled"),
        Scored("countdown", [1, 2], [1], [1], "sampled"),
        Scored("countdown", [1, 2], [1], [0], "sampled"),
    ]
    _, _, tags, labels = prm_arrays(examples, pad=0, balance=True)
    for which in ([0, 1], [2, 3]):  # arithmetic's rows, then Countdown's
        weight, label = tags[which], labels[which]
        good, bad = weight[(weight > 0) & (label == 1)].sum(), weight[(weight > 0) & (label == 0)].sum()
        assert good == pytest.approx(bad) and good + bad == pytest.approx(sum(len(examples[r].tags) for r in which))
    _, _, plain, _ = prm_arrays(examples, pad=0)
    assert set(np.unique(plain)) == {0.0, 1.0}


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    """Stopped after step 3 (checkpoint at step 2), the run continues from step 2 on the same batches and
    ends with exactly the parameters of an uninterrupted run; a checkpoint of another schedule is refused."""
    tok = build_tokenizer()
    config = Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8, max_position_embeddings=128)

    def batches(stop_after=None):
        for i, batch in enumerate(lm_batches(tok, np.random.default_rng(0), 4)):
            if i == stop_after:
                raise KeyboardInterrupt
            yield batch

    whole, whole_loss = train(random_init(config, seed=0), lm_loss, batches(), 5, 1e-2, 2, "lm")
    checkpoint = tmp_path / "lm.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(random_init(config, seed=0), lm_loss, batches(stop_after=3), 5, 1e-2, 2, "lm", checkpoint=checkpoint)
    resumed, resumed_loss = train(random_init(config, seed=0), lm_loss, batches(), 5, 1e-2, 2, "lm",
                                  checkpoint=checkpoint)
    np.testing.assert_array_equal(resumed.lm_head.kernel[...], whole.lm_head.kernel[...])
    assert resumed_loss == whole_loss
    with pytest.raises(InputError, match="another run"):
        train(random_init(config, seed=0), lm_loss, batches(), 6, 1e-2, 2, "lm", checkpoint=checkpoint)


def test_on_policy_data_samples_each_problem_several_times(monkeypatch):
    seen = []

    def sample_traces(sampler, params, tok, key, problems):
        seen.extend(p.problem for p in problems)
        return [[] for _ in problems]  # no complete step: nothing to label

    monkeypatch.setattr(ppl.train, "sample_traces", sample_traces)
    examples = prm_examples(build_tokenizer(), np.random.default_rng(0), None, None, None, 12, 0, per_problem=4)
    assert examples == [] and len(seen) == 12 and len(set(map(repr, seen))) == 3
    assert all(seen[i] == seen[i - i % 4] for i in range(12))  # each problem's samples side by side


def test_the_stream_labels_fresh_corrupted_traces_by_the_oracle():
    """Every streamed row is a new arithmetic problem (share 0) with a trace whose tags carry the oracle's
    labels, weighed by the class weights given; two batches share no problem."""
    tok = build_tokenizer()
    weights = {("arithmetic", 0): 3.0, ("arithmetic", 1): 0.5}
    stream = corrupted_batches(tok, np.random.default_rng(0), 16, countdown_share=0.0, weights=weights)
    prompts, tag_labels = [], []
    for ids, mask, tags, labels in itertools.islice(stream, 2):
        assert ids.shape[0] == 16 and set(np.unique(tags[tags > 0])) <= {3.0, 0.5}
        for row in range(16):
            text = tok.decode(ids[row][mask[row]], skip_special_tokens=True)
            prompt, *lines = text.split("\n")[:-1]
            expr = prompt.removeprefix("arithmetic ")
            at = np.flatnonzero(tags[row])
            assert len(at) == len(lines) and all(ids[row][at] == tok.encode("\n")[0])
            assert labels[row][at].tolist() == TASKS["arithmetic"].training.step_labels(expr, lines)
            assert tags[row][at].tolist() == [weights["arithmetic", int(x)] for x in labels[row][at]]
            prompts.append(prompt)
            tag_labels += labels[row][at].tolist()
    assert len(set(prompts)) == 32 and 0 < np.mean(tag_labels) < 1  # slips and right steps both


def test_joined_batches_stack_one_batch_of_each_stream_per_step():
    a = iter([(np.zeros((2, 3)), np.ones((2, 3)))] * 2)
    b = iter([(np.full((1, 3), 7.0), np.full((1, 3), 8.0))] * 2)
    batches = list(joined(a, b))
    assert len(batches) == 2
    first, second = batches[0]
    assert first.tolist() == [[0.0] * 3, [0.0] * 3, [7.0] * 3] and second.tolist() == [[1.0] * 3, [1.0] * 3, [8.0] * 3]

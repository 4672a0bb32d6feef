"""Our Flax models against transformers' PyTorch outputs (golden files), and loading errors."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import models
from models.llama import scores_of, weighted
from models.sampling import SamplingParams, generate, stop_table_from_bytes

CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"
FAMILIES = ["llama", "llama_sharded", "llama3", "llama3_legacy", "qwen2", "qwen3", "mistral"]

forward = jax.jit(lambda lm, ids, mask=None: lm(ids, mask))


def golden(name):
    return load_file(CHECKPOINTS / name / "golden.safetensors")


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(name):
    lm, tokenizer = models.load(CHECKPOINTS / name)
    g = golden(name)
    np.testing.assert_allclose(forward(lm, jnp.asarray(g["input_ids"])), g["logits"], atol=1e-4)
    # Left padding: real positions match transformers' generate() position ids.
    mask = g["padded_attention_mask"].astype(bool)
    padded = forward(lm, jnp.asarray(g["padded_input_ids"]), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(padded)[mask], g["padded_logits"][mask], atol=1e-4)
    assert tokenizer.pad_token_id == 0


@pytest.mark.parametrize("name", ["llama", "qwen3", "mistral", "llama3"])
def test_greedy_decoding_matches_transformers_generate(name):
    lm, _ = models.load(CHECKPOINTS / name)
    g = golden(name)
    prompt = jnp.asarray(g["greedy_prompt"])
    new = g["greedy_tokens"].shape[1] - prompt.shape[1]
    stops = stop_table_from_bytes([b"?"] * lm.config.vocab_size)  # no EOS, no stop string
    run = jax.jit(generate, static_argnums=4)
    result = run(lm, jax.random.key(0), prompt, None, SamplingParams(temperature=0.0, max_tokens=new), stops)
    np.testing.assert_array_equal(np.asarray(result.tokens), g["greedy_tokens"][:, prompt.shape[1]:])


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_bfloat16_close_to_transformers_bfloat16(name):
    lm, _ = models.load(CHECKPOINTS / name, dtype="bfloat16")
    assert lm.embed_tokens.embedding.get_value().dtype == jnp.bfloat16
    g = golden(name)
    ours = np.asarray(forward(lm, jnp.asarray(g["input_ids"])))
    spread = np.ptp(g["logits"])
    assert np.max(np.abs(ours - g["logits_bf16"])) < 0.05 * spread


def copy_checkpoint(tmp_path, name="llama"):
    target = tmp_path / name
    shutil.copytree(CHECKPOINTS / name, target)
    (target / "golden.safetensors").unlink()
    return target


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(models.CheckpointError, match="does not exist"):
        models.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.CheckpointError, match="no config.json"):
        models.load(tmp_path / "empty")
    path = copy_checkpoint(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(models.CheckpointError, match="no \\*.safetensors"):
        models.load(path)


def test_pickle_only_checkpoint_is_refused_with_reason(tmp_path):
    path = copy_checkpoint(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(models.UnsafeCheckpointError, match="execute arbitrary code"):
        models.load(path)


def test_unsupported_model_type(tmp_path):
    path = copy_checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.UnsupportedModelError, match="'gpt2'"):
        models.load(path)


def test_tensor_name_and_shape_mismatch_name_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    path = copy_checkpoint(tmp_path)
    tensors = load_file(path / "model.safetensors")
    renamed = dict(tensors)
    renamed["model.layers.1.mlp.up_proj.weigth"] = renamed.pop("model.layers.1.mlp.up_proj.weight")
    save_file(renamed, path / "model.safetensors")
    with pytest.raises(models.CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        models.load(path)
    reshaped = dict(tensors)
    reshaped["model.norm.weight"] = np.ones(7, np.float32)
    save_file(reshaped, path / "model.safetensors")
    with pytest.raises(models.CheckpointError, match="'model.norm.weight' has shape \\(7,\\)"):
        models.load(path)


def test_truncated_safetensors(tmp_path):
    path = copy_checkpoint(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(models.CheckpointError, match="truncated or corrupt"):
        models.load(path)


def test_sharded_index_naming_a_missing_shard(tmp_path):
    path = copy_checkpoint(tmp_path, "llama_sharded")
    shard = sorted(path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(models.CheckpointError, match=shard.name):
        models.load(path)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("prompt_rows", [1, 2])
def test_shared_prefix_equals_a_copied_prompt(window, prompt_rows):
    """Rows reading a shared prompt cache (row b -> prompt b // G) get the logits of rows that
    hold a copy of the prompt, left padding and a sliding window included."""
    from models.llama import Config, random_init

    config = Config(vocab_size=11, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, sliding_window=window)
    lm = random_init(config, seed=0, scale=0.5)
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(0, 11, (prompt_rows, 5)))
    prompt_mask = jnp.asarray([[True] * 5, [False, False, True, True, True]][:prompt_rows])
    steps = jnp.asarray(rng.integers(0, 11, (4, 3)))
    _, prefix = lm.extend(prompts, lm.init_cache(prompt_rows, 5), prompt_mask)
    shared, own = lm.extend(steps, lm.init_cache(4, 3), None, prefix)
    copies = 4 // prompt_rows
    tokens = jnp.concatenate([jnp.repeat(prompts, copies, 0), steps], 1)
    mask = jnp.concatenate([jnp.repeat(prompt_mask, copies, 0), jnp.ones((4, 3), bool)], 1)
    copied, _ = lm.extend(tokens, lm.init_cache(4, 8), mask)
    np.testing.assert_allclose(shared, copied[:, 5:], atol=1e-5)
    prompt_lengths = np.repeat(np.asarray(prompt_mask).sum(1), copies)
    np.testing.assert_array_equal(own.positions, prompt_lengths[:, None] + np.arange(3))  # positions continue
    assert own.capacity == 3  # the rows' caches hold their own tokens only
    with pytest.raises(ValueError, match="cannot be shared"):
        lm.extend(steps[:3], lm.init_cache(3, 3), None, lm.init_cache(2, 5))


def test_attention_products_are_the_einsums_they_reorder():
    """`scores_of` and `weighted` (operands put in batched-matmul order for XLA:CPU) equal the plain einsums, with
    several rows reading each key row and several queries each."""
    rng = np.random.default_rng(0)
    shared, per_row, length, heads, groups, dim, slots = 2, 3, 4, 2, 3, 5, 7
    q = jnp.asarray(rng.normal(size=(shared, per_row, length, heads, groups, dim)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(shared, heads, dim, slots)), jnp.float32)
    weights = jnp.asarray(rng.random(size=(shared, per_row, heads, groups, length, slots)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(shared, heads, slots, dim)), jnp.float32)
    np.testing.assert_allclose(scores_of(q, keys), jnp.einsum("prtkgd,pkds->prkgts", q, keys), rtol=1e-5, atol=1e-5)
    expected = jnp.einsum("prkgts,pksd->prtkgd", weights, values)
    np.testing.assert_allclose(weighted(weights, values), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("shared_prompt", [False, True])
@pytest.mark.parametrize("read_filled", [False, True])
def test_blocked_attention_equals_whole_softmax(monkeypatch, window, shared_prompt, read_filled):
    """A chunk over a long cache attends `KEY_BLOCK` slots at a time (an online softmax): the logits and caches of
    one softmax over every slot, with padding, rows that see nothing, a sliding window and a shared prompt; with
    `read_filled` only the blocks up to the last filled slot."""
    from models import llama

    config = llama.Config(vocab_size=11, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, sliding_window=window)
    lm = llama.random_init(config, seed=0, scale=0.5)
    rng = np.random.default_rng(2)
    prefix = lm.extend(jnp.asarray(rng.integers(0, 11, (1, 5))), lm.init_cache(1, 5))[1] if shared_prompt else None
    history = jnp.arange(9)[None, :] < jnp.array([9, 2, 0])[:, None]  # rows holding 9, 2 and 0 tokens
    chunk = jnp.asarray([[True] * 6, [False, True, True, False, True, True], [False] * 6])  # the last row: padding
    tokens = jnp.asarray(rng.integers(0, 11, (3, 9))), jnp.asarray(rng.integers(0, 11, (3, 6)))

    def run(block):
        monkeypatch.setattr(llama, "KEY_BLOCK", block)
        # 17 slots: the last block overlaps filled ones
        cache = lm.extend(tokens[0], lm.init_cache(3, 17), history, prefix)[1]
        return lm.extend(tokens[1], cache, chunk, prefix, read_filled=read_filled)  # filled: blocks up to slot 15

    (whole, whole_cache), (blocked, blocked_cache) = run(1000), run(4)
    np.testing.assert_allclose(blocked[chunk], whole[chunk], atol=2e-5)  # padding's outputs are never read
    for a, b in zip(jax.tree.leaves(blocked_cache), jax.tree.leaves(whole_cache), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_reading_the_filled_part_of_a_big_cache_gives_the_same_logits(shared_prompt):
    """`read_filled` attends over the smallest `read_sizes` bucket holding every filled slot: the logits
    of a full read (to float rounding: the sums run over fewer zeros); under `vmap` the branch index stays unbatched
    (a `cond` in the jaxpr, not a `select` of every bucket)."""
    from models.llama import Config, random_init, read_sizes

    assert read_sizes(300) == (64, 128, 256, 300) and read_sizes(64) == (64,)
    config = Config(vocab_size=11, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8)
    lm = random_init(config, seed=0, scale=0.5)
    rng = np.random.default_rng(1)
    prompt = jnp.asarray(rng.integers(0, 11, (1, 5)))
    prefix = lm.extend(prompt, lm.init_cache(1, 5))[1] if shared_prompt else None
    cache = lm.init_cache(3, 1000)
    filled = jnp.arange(70)[None, :] < jnp.array([70, 9, 0])[:, None]  # rows holding 70, 9 and 0 tokens
    cache = lm.extend(jnp.asarray(rng.integers(0, 11, (3, 70))), cache, filled, prefix)[1]
    token = jnp.asarray(rng.integers(0, 11, (3, 1)))
    full, full_cache = lm.extend(token, cache, None, prefix)
    read, read_cache = lm.extend(token, cache, None, prefix, read_filled=True)  # reads 128 of 1000 slots
    np.testing.assert_allclose(read, full, atol=2e-5)
    for a, b in zip(jax.tree.leaves(read_cache), jax.tree.leaves(full_cache), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)  # later layers' keys follow earlier layers' attention

    def one(token, row):  # one row's cache, its batch axis restored
        row = jax.tree.map(lambda x: x[None], row)
        return lm.extend(token[None], row, None, prefix, read_filled=True)[0][0]

    if prefix is None:
        vmapped = jax.vmap(one)
        np.testing.assert_allclose(jax.jit(vmapped)(token, cache), full, atol=2e-5)
        jaxpr = str(jax.make_jaxpr(vmapped)(token, cache))
        assert "cond[" in jaxpr  # a batched index would have turned the switch into a select of every branch


def test_loads_are_quiet_without_pytorch():
    """transformers advises installing PyTorch when it is missing; loading our Flax models stays silent."""
    import os
    import subprocess
    import sys

    hide_torch = "import sys; sys.modules['torch'] = None; "
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    root = Path(__file__).parents[1]

    def stderr(code: str) -> str:
        return subprocess.run([sys.executable, "-c", hide_torch + code], cwd=root, env=env, capture_output=True,
                              text=True, check=True).stderr

    assert "PyTorch was not found" in stderr("import transformers")  # the advice this test silences
    checkpoint = root / "tests" / "fixtures" / "checkpoints" / "qwen2_chat"
    assert stderr(f"import models, models.prm; models.load({str(checkpoint)!r}); models.prm.load_prm"
                  f"({str(checkpoint.with_name('qwen2_prm'))!r})") == ""

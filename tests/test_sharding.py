"""Particles sharded over a device mesh: same key, same answer on 1 device and on 8; islands keep
the evidence unbiased and keep resampling on-device.

The 8-device checks run in a subprocess: the simulated CPU device count must be set before JAX
starts, and this test process has started it already.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from models_for_tests import YS, assert_close_in_mc_error, kalman, lg_init, lg_step

from inference import SMC, Islands, Routed
from inference.sharding import collective_bytes, route_plan
from ppl import StateSpaceProgram

TESTS = Path(__file__).parent


def run_on_8_devices(code: str) -> dict:
    """Run ``code`` (which prints one JSON line last) under 8 simulated CPU devices."""
    # LLVM's optimisations off: these runs compare programs with each other and spend their time compiling them
    # (the NUTS-heavy tests elsewhere run slower so, and keep the default)
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_global_resampling_gives_the_same_particles_on_1_and_8_devices():
    out = run_on_8_devices(
        """
        import json, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh
        from inference import SMC, EntropicPF, Routed
        from models.llama import Config, random_init
        from models.sampling import prefill
        from ppl import StateSpaceProgram
        from models_for_tests import YS, lg_init, lg_step, token_init, token_step, LENGTH
        from test_reasoning import PROMPT, STEPS, VOCAB, TablePRM, make_program

        config = Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=1,
                        num_heads=2, num_kv_heads=1, head_dim=8)
        lm = random_init(config, seed=1, scale=0.6)
        prm = TablePRM(jnp.asarray(np.random.default_rng(0).uniform(0.1, 1.0, (VOCAB, VOCAB)), jnp.float32))
        init, make_step = make_program()
        lm_args = (prefill(lm, PROMPT, None, PROMPT.shape[1] + STEPS), prm, lm)

        mesh = Mesh(np.array(jax.devices()), ("particles",))
        report = {"devices": len(jax.devices())}
        for name, program, args in [
            ("linear_gaussian", StateSpaceProgram(lg_init, lg_step, len(YS)), (YS,)),
            ("tokens", StateSpaceProgram(token_init, token_step, LENGTH), ()),
            ("lm", StateSpaceProgram(init, make_step("bernoulli"), STEPS), lm_args),
        ]:
            for threshold, route in ((1.0, 0), (1.0, 2)):  # global and routed resampling, every step
                one = SMC(program, 64, ess_threshold=threshold).run(jax.random.key(3), *args)
                strategy = Routed(route) if route else "systematic"
                eight = SMC(program, 64, strategy, threshold, mesh=mesh).run(jax.random.key(3), *args)
                pairs = list(zip(jax.tree.leaves(one.particles), jax.tree.leaves(eight.particles)))
                report[f"{name}/{threshold}/route {route}"] = {
                    "same_ancestors": bool(np.array_equal(one.ancestors, eight.ancestors)),
                    "same_discrete": all(bool(np.array_equal(a, b)) for a, b in pairs if a.dtype.kind in "biu"),
                    "float_difference": max(
                        [float(np.max(np.abs(a - b))) for a, b in pairs if a.dtype.kind == "f"] + [0.0]
                    ),
                    "log_evidence": [float(one.log_evidence), float(eight.log_evidence)],
                    "resampled": int(np.sum(one.resampled)),
                    "sharded": len(jax.tree.leaves(eight.particles)[0].sharding.device_set),
                }
        entropic = [EntropicPF(StateSpaceProgram(lg_init, lg_step, len(YS)), 64, "ess", 1.0, lookahead=True, mesh=m)
                    for m in (None, mesh)]
        one, eight = (pf.run(jax.random.key(3), YS) for pf in entropic)
        report["entropic_lookahead"] = {
            "same_ancestors": bool(np.array_equal(one.ancestors, eight.ancestors)),
            "same_discrete": True,
            "float_difference": float(np.max(np.abs(one.particles["x"] - eight.particles["x"]))),
            "log_evidence": [float(one.log_evidence), float(eight.log_evidence)],
            "resampled": int(np.sum(one.resampled)),
            "sharded": len(eight.particles["x"].sharding.device_set),
        }
        print(json.dumps(report))
        """
    )
    assert out.pop("devices") == 8
    for name, run in out.items():
        # Tokens, states and ancestors agree exactly; floats up to the summation order of a
        # smaller per-device batch (the LM's cache differs in the 7th digit).
        assert run["same_ancestors"] and run["same_discrete"], name
        assert run["float_difference"] < 1e-5, name
        assert run["sharded"] == 8, name
        assert run["resampled"] > 0, name
        np.testing.assert_allclose(*run["log_evidence"], rtol=1e-5)


def test_island_resampling_moves_no_particle_between_devices():
    out = run_on_8_devices(
        """
        import json, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        from inference import resampling
        from inference.sharding import (
            ParticlePlacement, collective_bytes, island_gather, island_resampler, routed_gather
        )
        from inference.resampling import adaptive_resampler

        mesh = Mesh(np.array(jax.devices()), ("particles",))
        sharded = NamedSharding(mesh, PartitionSpec("particles"))
        particles = jax.device_put(jnp.ones((64, 1000)), sharded)  # 4000 bytes per particle
        log_weights = jax.nn.log_softmax(jnp.linspace(0.0, 3.0, 64))

        def step(key, particles, log_weights, exchange):
            resample = island_resampler(adaptive_resampler("systematic", 1.0), resampling.systematic, 1.0, 8, exchange)
            ancestors, _, _ = resample(key, log_weights)
            return island_gather(8, exchange)(particles, ancestors)

        report = {}
        for exchange in (False, True):
            lowered = jax.jit(step, static_argnums=3).lower(jax.random.key(0), particles, log_weights, exchange)
            report[str(exchange)] = collective_bytes(lowered.compile().as_text())
        routed = routed_gather(ParticlePlacement(mesh, 64), capacity=2)
        ancestors = resampling.systematic(jax.random.key(1), log_weights, 64)
        report["routed"] = collective_bytes(jax.jit(routed).lower(particles, ancestors).compile().as_text())
        report["same"] = bool(np.array_equal(jax.jit(routed)(particles * jnp.arange(64)[:, None], ancestors),
                                              (particles * jnp.arange(64)[:, None])[ancestors]))
        print(json.dumps(report))
        """
    )
    island, exchange = sum(out["False"].values()), sum(out["True"].values())
    assert island < 4000  # less than one particle's state: only weights and decisions
    assert exchange >= 56 * 4000  # the global gather brings in the other devices' particles
    # Routed: an all-to-all of 2 particles per device pair (8 x 2 x 4000 bytes), the all-gather
    # kept only as the fallback branch.
    assert out["same"]
    assert 8 * 2 * 4000 <= out["routed"]["all-to-all"] < 8 * 2 * 4000 + 4000
    assert out["routed"]["all-gather"] >= 64 * 4000


def test_islands_keep_the_log_evidence_unbiased():
    program = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))
    smc = SMC(program, 32, Islands(4, exchange_every=2), ess_threshold=1.0)
    keys = jax.random.split(jax.random.key(11), 400)
    results = jax.jit(jax.vmap(lambda k: smc.run_unchecked(k, YS)))(keys)
    log_lik, mean = kalman(YS)
    ratio = np.exp(np.asarray(results.log_evidence) - log_lik)
    assert_close_in_mc_error(ratio, 1.0)
    filtered = np.sum(np.asarray(results.normalized_weights * results.particles["x"]), axis=1)
    assert_close_in_mc_error(filtered, mean, slack=0.02)
    ancestors = np.asarray(results.ancestors)  # [seeds, T, N]
    island_of = np.arange(32) // 8
    local_steps = [t for t in range(len(YS)) if t % 2 == 0]
    assert np.all(ancestors[:, local_steps] // 8 == island_of)  # no migration between exchanges
    assert np.any(ancestors[:, 1] // 8 != island_of)  # the exchange step mixes islands


def test_placement_errors_are_specific():
    program = StateSpaceProgram(lg_init, lg_step, num_steps=len(YS))
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("model", "particles"))
    assert SMC(program, 8, mesh=mesh).placement.axis == "particles"  # the particle axis by name, not position
    with pytest.raises(ValueError, match="must divide num_particles"):
        SMC(program, 10, Islands(4))
    with pytest.raises(ValueError, match="exchange_every"):
        Islands(4, exchange_every=0)
    with pytest.raises(ValueError, match="give the engine a mesh="):
        SMC(program, 8, Routed(2))


def test_collective_bytes_reads_hlo_shapes():
    text = (
        "%a = f32[8,1000]{1,0} all-gather(%x)\n"
        "%b = (s32[4]{0}, pred[]) all-reduce(%y)\n"
        "%c = (f32[2]{0}, f32[16]{0}) all-gather-start(%z)\n"
    )
    assert collective_bytes(text) == {"all-gather": 32064, "all-reduce": 17}


def test_route_plan_lists_what_each_device_lacks():
    # 4 devices x 2 particles; device 0's slots descend from particles 0 and 5, device 1's from 5, 5,
    # device 2's from 4 and 7, device 3's from 7 and 6.
    ancestors = jnp.array([0, 5, 5, 5, 4, 7, 7, 6])
    lists, fits = route_plan(ancestors, num_devices=4, capacity=1)
    assert bool(fits)
    assert int(lists[0, 2, 0]) == 1 and int(lists[1, 2, 0]) == 1  # particle 5 is device 2's index 1
    assert int(lists[2, 3, 0]) == 1 and int(lists[3, 3, 0]) == 0  # 7 and 6 live on device 3
    assert int(lists[0, 1, 0]) == 2  # nothing from device 1: the pad value N/D
    _, fits = route_plan(jnp.array([4, 5, 5, 5, 4, 5, 7, 6]), num_devices=4, capacity=1)
    assert not bool(fits)  # device 0 needs both of device 2's particles: more than capacity 1


def test_model_parallel_weights_give_the_same_answers():
    """`--mesh particles=4,model=2`: the shipped LM's and PRM's heads and MLP units split over 2 devices, the
    particles over 4: the same traces, weights and answers as one device, for the same key (the PRM reading
    its steps in chunks, as it does real steps), with contiguous and with paged caches."""
    out = run_on_8_devices(
        """
        import json, jax, numpy as np
        from ppl.commands.shipped import load_models
        from ppl.commands.solve import parse_mesh
        from ppl.search import SearchSpec
        from ppl.solver import Solver
        from ppl.tasks import EVAL_SEED, TASKS

        task = TASKS["countdown"]
        problems = task.generate(EVAL_SEED, 2)
        mesh = parse_mesh("particles=4,model=2")
        report = {}
        for name, kwargs, cache in (("one", {}, "contiguous"), ("mesh", {"mesh": mesh}, "contiguous"),
                                    ("mesh_paged", {"mesh": mesh}, "paged")):
            lm, tokenizer, prm = load_models(task)
            prm.step_chunk = 8  # its steps (20 tokens and a tag) are read in chunks: a loop over sharded caches
            solver = Solver(task, lm, tokenizer, prm, **kwargs)
            (_, result, _), = solver.runs(problems, SearchSpec("pf", 8, cache=cache))
            report[name] = {"texts": [solver.particle_texts(result, row) for row in range(2)],
                            "log_weights": np.asarray(result.log_weights).tolist()}
        import argparse
        from ppl.commands.solve import _spec
        flags = dict(method="pf", particles=8, form="bernoulli", schedule="ess", lookahead=False, cache=None)
        report["default_cache"] = [_spec(argparse.Namespace(mesh=mesh, **flags), "paged").cache
                                   for mesh in (None, "particles=1,model=8", "particles=4,model=2")]
        kernel = solver.lm.layers[0].self_attn.q_proj.kernel.get_value()
        report["split"] = list(kernel.sharding.spec)
        from models.llama import Config, random_init, shard_weights
        odd = random_init(Config(vocab_size=8, hidden_size=8, intermediate_size=6, num_layers=1, num_heads=2,
                                 num_kv_heads=1, head_dim=4))
        try:
            shard_weights(odd, parse_mesh("particles=2,model=4"))
        except ValueError as err:
            report["error"] = str(err)
        print(json.dumps(report))
        """
    )
    assert out["split"] == [None, "model"]
    assert out["default_cache"] == ["paged", "paged", "contiguous"]  # the pool is whole on every device
    assert "6 units, not divisible over the 4 devices of mesh axis 'model'" in out["error"]
    for name in ("mesh", "mesh_paged"):
        assert out[name]["texts"] == out["one"]["texts"]
        np.testing.assert_allclose(out[name]["log_weights"], out["one"]["log_weights"], rtol=1e-5, atol=1e-5)


def test_mesh_flag_errors_are_one_line():
    from ppl.commands.solve import parse_mesh
    from ppl.errors import InputError

    with pytest.raises(InputError, match=f"needs 4000 devices; this run has {len(jax.devices())}"):
        parse_mesh("particles=1000,model=4")
    for bad in ("particles=four", "experts=2", "particles=0", "particles"):
        with pytest.raises(InputError, match="must look like particles=P,model=M"):
            parse_mesh(bad)

"""`ppl solve` (free-text reasoning with the user's own LM and PRM) and `ppl countdown|arithmetic solve`
(the shipped tasks): run a search method over a JSONL file of problems, one output line per problem."""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import time
from pathlib import Path
from typing import Any

from ppl.commands.shipped import PRM_KINDS
from ppl.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")
LOGGER = logging.getLogger("ppl")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ppl.tasks import TASKS

    for task in TASKS:
        group = subparsers.add_parser(task, help=f"{task} problems")
        commands = group.add_subparsers(dest="action", required=True)
        solve = commands.add_parser("solve", help=f"solve {task} problems from a JSONL file")
        _search_arguments(solve)
        solve.add_argument("--prm", choices=PRM_KINDS, default="learned")
        solve.add_argument("--lm-path", help="local HF checkpoint of the proposal LM (default: shipped)")
        solve.add_argument("--prm-path", help="local HF checkpoint of the PRM (default: shipped)")
        solve.set_defaults(run=run_task, task=task)
    _register_free_text(subparsers)


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every solve command shares: problems, method, budget, output, likelihood."""
    from inference.entropic import SCHEDULES
    from ppl.search import CACHES, METHODS

    parser.add_argument("--problems", required=True, help="input JSONL, one problem per line")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--particles", type=int, default=16, help="budget N: particles, samples or beams")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--seed", type=int, default=0,
                        help="problem i (its line, from 0) samples from the key fold_in(key(SEED), i): its traces do "
                        "not depend on --batch-rows, --memory or the other problems")
    parser.add_argument("--form", choices=("bernoulli", "twist", "replace"), default="bernoulli",
                        help="how the particle filter uses the PRM")
    parser.add_argument("--schedule", choices=SCHEDULES, default="ess",
                        help="epf: temperature schedule of the entropic resampling")
    parser.add_argument("--lookahead", action="store_true", help="epf: score a one-step draft before resampling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or compile messages on stderr")
    parser.add_argument("--cache", choices=CACHES,
                        help="KV caches: 'paged' keeps them in pages the particles share (resampling copies page "
                             "tables, not keys and values; over a --mesh each particle device holds the whole pool). "
                             "Default: paged for `ppl solve` (long traces) unless the particles are split over "
                             "devices, contiguous for the shipped tasks' short ones")
    parser.add_argument("--mesh", metavar="particles=P,model=M",
                        help="spread the run over every device: particles over P of them, the LM's and PRM's "
                        "weights (attention heads, MLP units) over M; P x M must be the device count")


def parse_mesh(text: str) -> Any:
    """`particles=P,model=M` (either may be left out: size 1) as a `Mesh` over every device of every host."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    sizes = {"particles": 1, "model": 1}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if name.strip() not in sizes or not size.strip().isdigit() or int(size) < 1:
            raise InputError(f"--mesh must look like particles=P,model=M with positive sizes, got {text!r}")
        sizes[name.strip()] = int(size)
    devices = jax.devices()
    if sizes["particles"] * sizes["model"] != len(devices):
        raise InputError(f"--mesh {text} needs {sizes['particles'] * sizes['model']} devices; "
                         f"this run has {len(devices)}")
    return Mesh(np.array(devices).reshape(sizes["particles"], sizes["model"]), ("particles", "model"))


def _register_free_text(subparsers: argparse._SubParsersAction) -> None:
    from ppl.prompting import QWEN_MATH_SYSTEM
    from ppl.readout import AGGREGATIONS

    solve = subparsers.add_parser(
        "solve", help="free-text reasoning with your own local HF LM and PRM (MATH500, GSM8K, AIME, prompts)"
    )
    solve.add_argument("--lm", required=True, help="local HF checkpoint directory of the LM")
    solve.add_argument("--prm", required=True,
                       help="local HF checkpoint directory of the PRM, or 'none' (greedy and majority only)")
    _search_arguments(solve)
    solve.add_argument("--max-steps", type=int, default=32, help="most steps in a trace")
    solve.add_argument("--max-step-tokens", type=int, default=256, help="token cap of one step")
    solve.add_argument("--max-tokens", type=int,
                       help="the trace's token budget: it ends at the first step that reaches it "
                            "(default: max-steps x max-step-tokens)")
    steps = solve.add_mutually_exclusive_group()
    steps.add_argument("--step-delimiter", default="\\n\\n",
                       help="a step ends at this text, backslash escapes read (default: a blank line, '\\n\\n')")
    steps.add_argument("--tokens-per-step", type=int,
                       help="fixed-size steps of K tokens, for models without a delimiter habit")
    solve.add_argument("--temperature", type=float, help="default: the checkpoint's generation_config.json")
    solve.add_argument("--top-p", type=float, help="default: the checkpoint's generation_config.json")
    solve.add_argument("--system", default=QWEN_MATH_SYSTEM,
                       help="system prompt of the LM's and the PRM's chat templates ('' for none; default: "
                            "the Qwen-Math prompt)")
    solve.add_argument("--no-chat-template", action="store_true",
                       help="prompt the LM with the plain text, not its chat template")
    solve.add_argument("--dtype", choices=DTYPES, help="weights and compute dtype (default: the checkpoint's own)")
    solve.add_argument("--prm-aggregate", choices=AGGREGATIONS,
                       help="how bon, wbon, wmajority and beam's final pick combine a trace's step rewards "
                            "(default: each method's own; see ppl.search)")
    solve.add_argument("--question-field", help="the input field holding the question (default: detected)")
    solve.add_argument("--answer-field", help="the input field holding the gold answer (default: answer)")
    rows = solve.add_mutually_exclusive_group()
    rows.add_argument("--batch-rows", type=int,
                      help="particle rows run at once (problems per run = rows / particles; default: one problem)")
    rows.add_argument("--memory", type=float, metavar="GIB",
                      help="device memory to fill: run as many problems at once (a power of two) as the compiled "
                           "program fits in, by XLA's own memory accounting")
    solve.set_defaults(run=run_free_text)


def run_task(args: argparse.Namespace) -> int:
    from ppl.commands.shipped import load_models
    from ppl.solver import Solver
    from ppl.tasks import TASKS

    spec = _spec(args, "contiguous")
    task = TASKS[args.task]
    problems = task.read(args.problems)
    out = _output(args.out)
    solver = Solver(task, *load_models(task, args.prm, args.lm_path, args.prm_path), mesh=spec.mesh)
    return _solve_and_write(solver, problems, spec, args.seed, out, args.task, args.quiet)


def run_free_text(args: argparse.Namespace) -> int:
    import models
    from models.loading import checkpoint_dtype, generation_defaults
    from models.prm import load_prm
    from models.sampling import SamplingParams
    from ppl import prompting
    from ppl.solver import METHODS_WITHOUT_PRM, NO_PRM, Solver
    from ppl.tasks.math import math_task

    spec = _spec(args, "paged")
    for flag in ("max_steps", "max_step_tokens", "max_tokens", "tokens_per_step", "batch_rows"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.memory is not None and not args.memory > 0:
        raise InputError(f"--memory must be a positive number of GiB, got {args.memory}")
    without_prm = args.prm.lower() == "none"
    if without_prm and args.method not in METHODS_WITHOUT_PRM:
        raise InputError(f"--method {args.method} needs a PRM; with --prm none use {' or '.join(METHODS_WITHOUT_PRM)}")
    delimiter = None if args.tokens_per_step else codecs.decode(args.step_delimiter, "unicode_escape")
    if delimiter == "":
        raise InputError("--step-delimiter must not be empty (use --tokens-per-step for fixed-size steps)")
    out = _output(args.out)

    lm, tokenizer = models.load(args.lm, args.dtype or checkpoint_dtype(args.lm))
    defaults = generation_defaults(args.lm, tokenizer)
    if without_prm:
        prm, prm_tokenizer = NO_PRM, None
    else:
        prm, prm_tokenizer = load_prm(args.prm, args.dtype or checkpoint_dtype(args.prm))
        prompting.check_same_vocabulary(tokenizer, prm_tokenizer)
    params = SamplingParams(
        temperature=defaults.temperature if args.temperature is None else args.temperature,
        top_k=defaults.top_k,
        top_p=defaults.top_p if args.top_p is None else args.top_p,
        max_tokens=args.tokens_per_step or args.max_step_tokens,
    )
    system = args.system or None
    if not args.no_chat_template and not prompting.has_chat_template(tokenizer):
        LOGGER.info(f"ppl solve: {args.lm} has no chat template; prompting with plain text")
    task = math_task(
        prompting.chat_prompt(tokenizer, system, use_template=not args.no_chat_template),
        max_steps=args.max_steps,
        params=params,
        step_delimiter=delimiter,
        max_trace_tokens=args.max_tokens,
        question_field=args.question_field,
        answer_field=args.answer_field,
    )
    problems = task.read(args.problems)
    prm_prompt = None
    if not without_prm:
        render = prompting.prm_prompt(prm_tokenizer, system)
        prm_prompt = lambda problem: render(problem.question)
    solver = Solver(task, lm, tokenizer, prm, prm_prompt=prm_prompt, prm_tokenizer=prm_tokenizer,
                    eos_ids=defaults.eos_ids, aggregation=args.prm_aggregate,
                    batch_rows=args.batch_rows or spec.particles,
                    memory_bytes=None if args.memory is None else int(args.memory * 2**30), mesh=spec.mesh)
    return _solve_and_write(solver, problems, spec, args.seed, out, "solve", args.quiet)


def _spec(args: argparse.Namespace, default_cache: str) -> Any:
    """The search spec of the arguments; without `--cache`, `default_cache`, but contiguous caches when the
    particles are split over devices (a paged run holds its whole pool on each particle device)."""
    from ppl.search import SearchSpec

    if args.particles < 1:
        raise InputError(f"--particles must be at least 1, got {args.particles}")
    mesh = None if args.mesh is None else parse_mesh(args.mesh)
    if mesh is not None and args.particles % mesh.shape["particles"]:
        raise InputError(f"--particles {args.particles} must be a multiple of the mesh's {mesh.shape['particles']} "
                         "particle devices")
    cache = default_cache if mesh is None or mesh.shape["particles"] == 1 else "contiguous"
    try:
        return SearchSpec(args.method, args.particles, form=args.form, schedule=args.schedule,
                          lookahead=args.lookahead, mesh=mesh, cache=args.cache or cache)
    except ValueError as err:
        raise InputError(str(err)) from None


def _output(path: str) -> Path:
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise InputError(f"output directory {out.parent} does not exist")
    return out


def _solve_and_write(solver: Any, problems: list, spec: Any, seed: int, out: Path, label: str, quiet: bool) -> int:
    """Run `spec` on `problems` with a progress bar, write one line per problem as each run ends (an error or an
    interrupt later keeps the lines already written, and says how many), print a summary."""
    from ppl.errors import PPLError
    from ppl.progress import bar

    began = time.perf_counter()
    name = f"{label} {spec.method} N={spec.particles}"
    records = []
    with bar(len(problems), name, quiet) as progress, out.open("w") as handle:
        progress.set_postfix_str("compiling")
        try:
            for chunk in solver.records(problems, spec, (spec.method,), seed=seed):
                for record in chunk[spec.method]:
                    handle.write(json.dumps(record) + "\n")
                handle.flush()
                records += chunk[spec.method]
                progress.update(len(records) - progress.n)
                progress.set_postfix_str(f"compile {solver.compile_seconds:.0f}s")
        except (PPLError, KeyboardInterrupt) as err:
            if records:
                kept = f"{len(records)} of {len(problems)} problems' lines kept in {out}"
                err.args = (f"{err.args[0]} ({kept})" if err.args else kept, *err.args[1:])
            raise
    graded = [r["correct"] for r in records if "correct" in r]
    answered = sum(r["answer"] is not None for r in records)
    summary = f"accuracy {sum(graded) / len(graded):.3f} on {len(graded)} graded" if graded else "no gold answers"
    resampled = [r["resampled"] for r in records if "resampled" in r]
    if spec.is_filter and resampled:
        summary += f", resampled at {sum(resampled) / len(resampled):.2f} steps per problem"
        if not any(resampled):
            summary += " (never: the weights stayed above the ESS threshold, so this was importance sampling)"
    print(f"{name}: {summary}, {answered}/{len(records)} answered, {sum(r['tokens'] for r in records)} tokens, "
          f"{time.perf_counter() - began:.1f}s (compile {solver.compile_seconds:.1f}s) -> {out}")
    return 0

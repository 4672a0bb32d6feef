"""Decode attention on XLA:CPU: which KV-cache layout its batched products read fastest, side by side.

One decoded token per row over a cache of `capacity` slots, as `models.llama` computes it: write the
token's key and value at a slot, then scores = q . keys and out = softmax(scores) . values, each one
`dot_general` batched over (rows, kv heads). Two layouts of a row's cache per head:

* "slot-dim keys": keys [slot, dim] and values [dim, slot] (both products sum over the minor axis);
* "dim-slot keys": keys [dim, slot] and values [slot, dim] (the axis not summed is the minor one), the
  layout of `models.llama.KVCache` and of `models.paging` pages.

And the paged read (pages gathered through each row's table, then the same products), with key pages
stored [page_size, dim] or [dim, page_size]. Median of `--repeats` jitted calls after a warm-up;
both layouts alternate, so background load hits them alike.

    python benchmarks/attention_layouts.py [--out benchmarks/results/attention_layouts.json] [--repeats 30]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

HEADS, GROUPS, PAGE = 2, 2, 16  # the shipped models' kv heads and query groups; the solver's page size
SHAPES = [(64, 32, 128), (1024, 32, 64), (1024, 32, 256), (64, 64, 512)]  # rows, head dim, capacity


def contiguous(keys_dim_major: bool):
    """One decode token's attention over a row's own cache (the key written at `slot` first)."""

    def step(keys, values, q, k_new, v_new, slot):
        if keys_dim_major:
            keys = keys.at[:, :, :, slot].set(k_new)
            values = values.at[:, :, slot].set(v_new)
            scores = jax.lax.dot_general(q, keys, (((3,), (2,)), ((0, 1), (0, 1))))
            out = jax.lax.dot_general(jax.nn.softmax(scores, -1), values, (((3,), (2,)), ((0, 1), (0, 1))))
        else:
            keys = keys.at[:, :, slot].set(k_new)
            values = values.at[:, :, :, slot].set(v_new)
            scores = jax.lax.dot_general(q, keys, (((3,), (3,)), ((0, 1), (0, 1))))
            out = jax.lax.dot_general(jax.nn.softmax(scores, -1), values, (((3,), (3,)), ((0, 1), (0, 1))))
        return keys, values, out

    return jax.jit(step, donate_argnums=(0, 1))


def paged(keys_dim_major: bool):
    """The same over pages gathered through each row's page table [rows, pages]."""

    def step(key_pages, value_pages, tables, q):
        rows, count = tables.shape
        at = (tables[:, None, :], jnp.arange(HEADS)[None, :, None])
        values = value_pages[at].reshape(rows, HEADS, count * PAGE, -1)
        if keys_dim_major:  # pages [dim, page]: gathered [rows, K, pages, D, P], laid out [rows, K, D, S]
            keys = key_pages[at].transpose(0, 1, 3, 2, 4).reshape(rows, HEADS, -1, count * PAGE)
            scores = jax.lax.dot_general(q, keys, (((3,), (2,)), ((0, 1), (0, 1))))
        else:
            keys = key_pages[at].reshape(rows, HEADS, count * PAGE, -1)
            scores = jax.lax.dot_general(q, keys, (((3,), (3,)), ((0, 1), (0, 1))))
        return jax.lax.dot_general(jax.nn.softmax(scores, -1), values, (((3,), (2,)), ((0, 1), (0, 1))))

    return jax.jit(step)


def median_ms(calls, repeats: int) -> list[float]:
    """Median milliseconds of each zero-argument call, alternating between them."""
    for call in calls:
        jax.block_until_ready(call())
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, seen in zip(calls, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(call())
            seen.append(time.perf_counter() - start)
    return [1e3 * float(np.median(seen)) for seen in times]


def measure(rows: int, dim: int, capacity: int, repeats: int, rng: np.random.Generator) -> dict:
    """Both layouts at one shape: contiguous decode steps, then paged reads (checked equal first)."""
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    q, k_new, v_new = normal(rows, HEADS, GROUPS, dim), normal(rows, HEADS, dim), normal(rows, HEADS, dim)
    keys, values = normal(rows, HEADS, dim, capacity), normal(rows, HEADS, capacity, dim)
    caches = {1: [keys, values], 0: [jnp.swapaxes(keys, 2, 3), jnp.swapaxes(values, 2, 3)]}  # same numbers
    steps = {major: contiguous(bool(major)) for major in (0, 1)}
    slots = iter(range(10**9))

    def decode(major: int):
        def run():
            *caches[major], out = steps[major](*caches[major], q, k_new, v_new, next(slots) % capacity)
            return out

        return run

    old, new = median_ms([decode(0), decode(1)], repeats)
    pages = 1 + rows * capacity // PAGE
    tables = jnp.asarray(rng.integers(1, pages, size=(rows, capacity // PAGE)), jnp.int32)
    value_pages, key_pages = normal(pages, HEADS, PAGE, dim), normal(pages, HEADS, dim, PAGE)
    key_pages = {1: key_pages, 0: jnp.swapaxes(key_pages, 2, 3)}
    reads = {major: functools.partial(paged(bool(major)), key_pages[major], value_pages, tables, q) for major in (0, 1)}
    np.testing.assert_allclose(reads[0](), reads[1](), rtol=1e-4, atol=1e-4)
    paged_old, paged_new = median_ms([reads[0], reads[1]], repeats)
    return {"rows": rows, "kv_heads": HEADS, "groups": GROUPS, "head_dim": dim, "capacity": capacity,
            "slot_dim_keys_ms": old, "dim_slot_keys_ms": new, "speedup": old / new,
            "paged_slot_dim_keys_ms": paged_old, "paged_dim_slot_keys_ms": paged_new,
            "paged_speedup": paged_old / paged_new}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/attention_layouts.json")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows_out = [measure(rows, dim, capacity, args.repeats, rng) for rows, dim, capacity in SHAPES]
    print(f"{'rows':>5} {'dim':>4} {'slots':>5}  {'slot-dim ms':>11} {'dim-slot ms':>11} {'x':>5}  "
          f"{'paged s-d':>9} {'paged d-s':>9} {'x':>5}")
    for r in rows_out:
        print(f"{r['rows']:5d} {r['head_dim']:4d} {r['capacity']:5d}  {r['slot_dim_keys_ms']:11.2f} "
              f"{r['dim_slot_keys_ms']:11.2f} {r['speedup']:5.2f}  {r['paged_slot_dim_keys_ms']:9.2f} "
              f"{r['paged_dim_slot_keys_ms']:9.2f} {r['paged_speedup']:5.2f}")
    result = {"benchmark": "attention_layouts", "backend": jax.default_backend(), "jax": jax.__version__,
              "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
              "repeats": args.repeats, "page_size": PAGE, "rows": rows_out}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

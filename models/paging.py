"""Paged KV caches: a pool of fixed-size pages shared by many rows, each row reading its own through a page table.

Rows that descend from one ancestor (particles after resampling) share the ancestor's pages instead of
each holding a copy: copying a row is copying its page table. A row writes new tokens into a small
contiguous buffer (an ordinary `KVCache`); `commit` then moves the buffer's filled slots to fresh pages,
one buffer per row, and appends them to the row's table. So every page is written once and only read
afterwards, and a page is free exactly when no table refers to it: the reference counts are the tables'
histogram, recounted at each commit, and the free list is the pages whose count is zero.

Page 0 is the null page: never written, every slot empty (position -1), the filler of a table's unused
entries, so that reading a whole table needs no mask beyond the one positions already give.

A page holds keys as [kv_heads, head_dim, page_size] and values as [kv_heads, page_size, head_dim], the page the
leading axis, in `KVCache`'s layouts: one gather by (page, head) lays a row's values out as [heads, slots, dim],
and its keys as [heads, pages, dim, page_size], which XLA turns into `KVCache`'s [heads, dim, slots] in the
gather itself.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from models.llama import KVCache, PrefixChoice, most, read_sizes


class PagePool(NamedTuple):
    """Keys, values and positions of every page; page 0 is the null page."""

    k: tuple[jax.Array, ...]  # per layer [pages, kv_heads, head_dim, page_size]
    v: tuple[jax.Array, ...]  # per layer [pages, kv_heads, page_size, head_dim]
    positions: jax.Array  # [pages, page_size] int32, -1 where empty
    exhausted: jax.Array  # [] bool: a commit found fewer free pages than it needed (its writes are lost)

    @property
    def num_pages(self) -> int:
        return self.positions.shape[0]

    @property
    def page_size(self) -> int:
        return self.positions.shape[1]

    @staticmethod
    def zeros(pages: int, page_size: int, layers: int, kv_heads: int, head_dim: int, dtype) -> PagePool:
        """Every page empty (position -1)."""
        zeros = lambda *shape: tuple(jnp.zeros((pages, kv_heads, *shape), dtype) for _ in range(layers))
        positions = jnp.full((pages, page_size), -1, jnp.int32)
        return PagePool(zeros(head_dim, page_size), zeros(page_size, head_dim), positions, jnp.zeros((), bool))


class PageTable(NamedTuple):
    """A row's pages, in the order written (0 past `count`)."""

    pages: jax.Array  # [rows, max_pages] int32
    count: jax.Array  # [rows] int32


class PagedContext(NamedTuple):
    """Read-only context of each row, through its page table: usable wherever a shared `prefix` cache is.

    It answers the prefix interface of `models.llama`: `rows`, `capacity`, `layer(i)` and `next_position()`.
    """

    pool: PagePool
    pages: jax.Array  # [rows, max_pages] int32
    count: jax.Array  # [rows] int32: pages in use (the first ones)

    @property
    def rows(self) -> int:
        return self.pages.shape[0]

    @property
    def capacity(self) -> int:
        return self.pages.shape[1] * self.pool.page_size

    def layer(self, index: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Layer `index`'s keys [rows, K, D, S], values [rows, K, S, D] and slot positions [rows, S]."""
        values = self.pool.v[index]
        heads, dim = values.shape[1], values.shape[-1]
        at = (self.pages[:, None, :], jnp.arange(heads)[None, :, None])  # [rows, K, pages]
        keys = self.pool.k[index][at].transpose(0, 1, 3, 2, 4)  # [rows, K, D, pages, page_size]
        return (keys.reshape(self.rows, heads, dim, self.capacity),
                values[at].reshape(self.rows, heads, self.capacity, dim), self.positions())

    def positions(self) -> jax.Array:
        return self.pool.positions[self.pages].reshape(self.rows, self.capacity)

    def narrowed(self) -> PrefixChoice:
        """This context read only up to a power of two of pages that holds every row's (every vmapped row's),
        or not at all (option None) while no row has a page: a trace's first step gathers no empty pages."""
        widths = read_sizes(self.pages.shape[1], smallest=2)
        index = jnp.searchsorted(jnp.asarray((0, *widths)), most(self.count))
        return PrefixChoice(index, (None, *(self._replace(pages=self.pages[:, :width]) for width in widths)))

    def next_position(self) -> jax.Array:
        """RoPE position the next token of each row takes after its context."""
        return jnp.max(self.positions(), axis=1) + 1


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


def references(pool: PagePool, tables: jax.Array) -> jax.Array:
    """How many table entries refer to each page [pages] (the null page's count is meaningless)."""
    return jnp.zeros((pool.num_pages,), jnp.int32).at[tables.reshape(-1)].add(1)


def commit(
    pool: PagePool, table: PageTable, buffer: KVCache, kept: jax.Array | None = None
) -> tuple[PagePool, PageTable]:
    """Move each row's buffered tokens (its `buffer` slots [0, length)) to fresh pages at the end of its table.

    The pages no table refers to are free (`kept`: further tables [rows', max_pages], e.g. of a trace that is
    no row's but is read later, whose pages stay taken); rows take them in order. When there are too few, the
    pool is marked `exhausted` and the rows that found none keep their table (their tokens are lost): callers
    must check the flag and not read the run's results.
    """
    size, rows = pool.page_size, table.pages.shape[0]
    per_row = pages_for(buffer.capacity, size)
    need = pages_for(buffer.length, size)  # [rows]
    taken = table.pages if kept is None else jnp.concatenate([table.pages.reshape(-1), kept.reshape(-1)])
    free = references(pool, taken) == 0
    free = free.at[0].set(False)
    available = jnp.sum(free)
    free_pages = jnp.nonzero(free, size=pool.num_pages, fill_value=pool.num_pages)[0]
    first = jnp.cumsum(need) - need
    j = jnp.arange(per_row)
    take = (j[None, :] < need[:, None]) & (first[:, None] + j[None, :] < available)
    new = jnp.where(take, free_pages[jnp.minimum(first[:, None] + j, pool.num_pages - 1)], pool.num_pages)

    def paged(x: jax.Array, slot_axis: int) -> jax.Array:
        """A buffer leaf [rows, ..., slots (at slot_axis), ...] as [rows, per_row, ..., page_size, ...]."""
        pad = [(0, 0)] * x.ndim
        pad[slot_axis] = (0, per_row * size - x.shape[slot_axis])
        x = jnp.pad(x, pad, constant_values=-1 if x.dtype == jnp.int32 else 0)
        x = x.reshape(x.shape[:slot_axis] + (per_row, size) + x.shape[slot_axis + 1 :])
        return jnp.moveaxis(x, slot_axis, 1)

    write = lambda pages, written, slot_axis: pages.at[new].set(paged(written, slot_axis).astype(pages.dtype),
                                                                 mode="drop")
    pool = PagePool(
        k=tuple(write(pages, written, 3) for pages, written in zip(pool.k, buffer.k, strict=True)),
        v=tuple(write(pages, written, 2) for pages, written in zip(pool.v, buffer.v, strict=True)),
        positions=pool.positions.at[new].set(paged(buffer.positions, 1), mode="drop"),
        exhausted=pool.exhausted | (jnp.sum(need) > available) | jnp.any(table.count + need > table.pages.shape[1]),
    )
    at = jnp.where(take, table.count[:, None] + j, table.pages.shape[1])
    pages = table.pages.at[jnp.arange(rows)[:, None], at].set(new, mode="drop")
    return pool, PageTable(pages, table.count + jnp.sum(take, axis=1, dtype=jnp.int32))

"""Reading, validating and integer-encoding judge data.

Every model in `ppl.judges` works on integer codes (task, worker, label, ...);
this module turns a user's DataFrame or TSV file into those codes, and turns
bad input into one-line `InputError`s that name the problem.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ppl.errors import InputError

LABEL_COLUMNS = ("task", "worker", "label")
SCORE_COLUMNS = ("item", "candidate", "judge", "score")
PAIR_COLUMNS = ("item", "left", "right", "judge", "winner")
CROWDKIT_PAIR_COLUMNS = ("worker", "left", "right", "label")  # crowd-kit's pairwise convention
TIE_WORDS = ("tie", "draw")


def read_table(path: str | Path, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a tab- or comma-separated file (told apart by its first line), with or without a header.

    A header is recognised when its first line names at least one of `columns`
    (case-insensitive); a header-less file must have exactly `len(columns)`
    fields per line, taken in that order. Every line must have as many fields as
    the first. Values that all parse as numbers become numbers, so labels
    `1, 2, 10` sort numerically (integers when every value is a finite integer).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a TSV or CSV file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise InputError(f"{path}: file is empty")
    delimiter = "\t" if "\t" in lines[0][1] or "," not in lines[0][1] else ","
    rows = [next(csv.reader([line], delimiter=delimiter)) for _, line in lines]
    for (number, _), row in zip(lines, rows, strict=True):
        if len(row) != len(rows[0]):
            raise InputError(f"{path}: line {number} has {len(row)} fields, expected {len(rows[0])} like line "
                             f"{lines[0][0]}")
    raw = pd.DataFrame(rows, dtype=str)
    first = [str(v).strip().lower() for v in raw.iloc[0]]
    known = set(columns or ()) | set(LABEL_COLUMNS + SCORE_COLUMNS + PAIR_COLUMNS + CROWDKIT_PAIR_COLUMNS + ("self",))
    if any(v in known for v in first) or columns is None:
        raw.columns = first
        raw = raw.iloc[1:].reset_index(drop=True)
    elif raw.shape[1] == len(columns):
        raw.columns = list(columns)
    else:
        raise InputError(f"{path}: no header and {raw.shape[1]} columns per line; "
                         f"expected {len(columns)} ({', '.join(columns)})")
    if raw.empty:
        raise InputError(f"{path}: header only, no data rows")
    out = {}
    for name in raw.columns:
        col = raw[name].str.strip()
        col = col.mask(col == "")
        num = pd.to_numeric(col, errors="coerce")
        if col.notna().any() and num.notna().sum() == col.notna().sum():
            finite = num.dropna()
            if np.isfinite(finite).all() and (finite == finite.round()).all():
                num = num.astype("Int64")
            out[name] = num
        else:
            out[name] = col
    return pd.DataFrame(out)


def pairwise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Pairwise rows in our columns: crowd-kit's `worker, left, right, label` (the label names the
    winner) become `item, left, right, judge, winner` (one item for all); ours pass unchanged."""
    if set(CROWDKIT_PAIR_COLUMNS) <= set(df.columns) and "winner" not in df.columns:
        df = df.rename(columns={"worker": "judge", "label": "winner"})
        if "item" not in df.columns:
            df = df.assign(item=0)
    return df


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise a one-line error naming the columns of `columns` that `df` lacks."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{what} data must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} data is missing column(s) {', '.join(missing)}; "
                         f"expected {', '.join(columns)} (got {', '.join(map(str, df.columns)) or 'none'})")
    if len(df) == 0:
        raise InputError(f"{what} data has no rows")


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and sorted categories of a column (order of appearance if unsortable)."""
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:
        codes, uniques = pd.factorize(values.astype(str), sort=True)
    return codes.astype(np.int32), pd.Index(uniques)


def _check_missing(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    for c in columns:
        bad = df[c].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{what} data: column '{c}' has a missing value (row {row + 1})")


def _check_no_empty_group(df: pd.DataFrame, group: str, value: str, what: str) -> None:
    """A worker/judge present (or declared as a category) but with no usable labels is an error."""
    present = set(df.loc[df[value].notna(), group])
    declared = df[group].cat.categories if isinstance(df[group].dtype, pd.CategoricalDtype) else df[group].unique()
    for g in declared:
        if pd.isna(g):
            continue
        if g not in present:
            raise InputError(f"{what} data: {group} '{g}' has no labels")


@dataclass(frozen=True)
class Labels:
    """Crowd labels encoded as integer codes: one entry per (task, worker, label) row."""

    task: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    tasks: pd.Index
    workers: pd.Index
    classes: pd.Index

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def encode_labels(df: pd.DataFrame) -> Labels:
    """Validate a crowd-kit style `task, worker, label` frame and encode it."""
    require_columns(df, LABEL_COLUMNS, "label")
    _check_no_empty_group(df, "worker", "label", "label")
    _check_missing(df, LABEL_COLUMNS, "label")
    df = df.reset_index(drop=True)
    task, tasks = _codes(df["task"])
    worker, workers = _codes(df["worker"])
    label, classes = _codes(df["label"])
    if len(classes) < 2:
        raise InputError(f"label data has a single label value ({classes[0]!r}); need at least 2 classes")
    return Labels(task, worker, label, tasks, workers, classes)


@dataclass(frozen=True)
class Scores:
    """Judge scores encoded as codes; a unit is one (item, candidate) pair with one true score."""

    unit: np.ndarray  # row -> unit
    judge: np.ndarray  # row -> judge
    level: np.ndarray  # row -> score level index
    is_self: np.ndarray  # row -> judge is scoring its own candidate
    unit_candidate: np.ndarray  # unit -> candidate
    unit_item: np.ndarray  # unit -> item
    candidates: pd.Index
    judges: pd.Index
    items: pd.Index
    levels: np.ndarray  # numeric value of each score level
    raw_score: np.ndarray  # row -> numeric score

    @property
    def n_levels(self) -> int:
        return len(self.levels)


def _numeric(col: pd.Series, name: str, what: str) -> np.ndarray:
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{what} data: column '{name}' must be numeric, got {col.iloc[row]!r} (row {row + 1})")
    values = num.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InputError(f"{what} data: column '{name}' has a non-finite value ({values[row]}, row {row + 1})")
    return values


def _self_flags(df: pd.DataFrame, self_map: dict | None) -> np.ndarray:
    flags = np.zeros(len(df), dtype=bool)
    if "self" in df.columns:
        col = df["self"]
        if col.dtype == bool or pd.api.types.is_numeric_dtype(col):
            vals = pd.to_numeric(col, errors="coerce").fillna(0).to_numpy()
            if not np.isin(vals, (0, 1)).all():
                raise InputError("score data: column 'self' must be 0/1 (judge scores its own candidate)")
            flags |= vals.astype(bool)
        else:
            text = col.astype(str).str.strip().str.lower()
            ok = text.isin(("0", "1", "true", "false", "yes", "no", "", "nan", "<na>"))
            if not ok.all():
                raise InputError(f"score data: column 'self' must be 0/1 or true/false, got {col[~ok].iloc[0]!r}")
            flags |= text.isin(("1", "true", "yes")).to_numpy()
    if self_map:
        unknown = [j for j in self_map if j not in set(df["judge"])]
        if unknown:
            raise InputError(f"self map names judge '{unknown[0]}' that has no scores")
        own = df["judge"].map(self_map)
        flags |= (own.to_numpy() == df["candidate"].to_numpy())
    return flags


def encode_scores(df: pd.DataFrame, self_map: dict | None = None) -> Scores:
    """Validate an `item, candidate, judge, score` frame and encode it.

    Score levels are the distinct score values, sorted; `self` (optional 0/1
    column) or `self_map` (judge -> its own candidate) flags self-judgements.
    """
    require_columns(df, SCORE_COLUMNS, "score")
    _check_no_empty_group(df, "judge", "score", "score")
    _check_missing(df, SCORE_COLUMNS, "score")
    df = df.reset_index(drop=True)
    raw = _numeric(df["score"], "score", "score")
    cand, candidates = _codes(df["candidate"])
    if len(candidates) < 2:
        raise InputError(f"score data has a single candidate ({candidates[0]!r}); ranking needs at least 2")
    judge, judges = _codes(df["judge"])
    item, items = _codes(df["item"])
    levels, level = np.unique(raw, return_inverse=True)
    if len(levels) < 2:
        raise InputError(f"score data: every score is {levels[0]:g}; need at least 2 distinct score levels")
    pair = item.astype(np.int64) * len(candidates) + cand
    upair, unit = np.unique(pair, return_inverse=True)
    return Scores(
        unit=unit.astype(np.int32), judge=judge, level=level.astype(np.int32),
        is_self=_self_flags(df, self_map), unit_candidate=(upair % len(candidates)).astype(np.int32),
        unit_item=(upair // len(candidates)).astype(np.int32), candidates=candidates, judges=judges,
        items=items, levels=levels, raw_score=raw,
    )


@dataclass(frozen=True)
class Pairs:
    """Pairwise judgements: outcome 0 = left wins, 1 = right wins, 2 = tie."""

    left: np.ndarray
    right: np.ndarray
    outcome: np.ndarray
    candidates: pd.Index


def encode_pairs(df: pd.DataFrame) -> Pairs:
    """Validate an `item, left, right, judge, winner` frame (or crowd-kit's `worker, left, right, label`)
    and encode it.

    `winner` is the left or right candidate's name, `left`/`right`, or `tie`/`draw`.
    """
    df = pairwise_frame(df)
    require_columns(df, PAIR_COLUMNS, "pairwise")
    _check_missing(df, ("left", "right", "winner"), "pairwise")
    df = df.reset_index(drop=True)
    _, candidates = _codes(pd.concat([df["left"], df["right"]], ignore_index=True))
    if len(candidates) < 2:
        raise InputError(f"pairwise data has a single candidate ({candidates[0]!r}); ranking needs at least 2")
    left = candidates.get_indexer(df["left"]).astype(np.int32)
    right = candidates.get_indexer(df["right"]).astype(np.int32)
    if (left == right).any():
        row = int(np.flatnonzero(left == right)[0])
        raise InputError(f"pairwise data: row {row + 1} compares candidate {df['left'][row]!r} with itself")
    win = df["winner"]
    text = win.astype(str).str.strip().str.lower()
    outcome = np.full(len(df), -1, dtype=np.int32)
    outcome[(win == df["left"]).to_numpy()] = 0
    outcome[(win == df["right"]).to_numpy()] = 1
    outcome[(outcome < 0) & (text == "left").to_numpy()] = 0
    outcome[(outcome < 0) & (text == "right").to_numpy()] = 1
    outcome[(outcome < 0) & text.isin(TIE_WORDS).to_numpy()] = 2
    if (outcome < 0).any():
        row = int(np.flatnonzero(outcome < 0)[0])
        raise InputError(f"pairwise data: winner {win[row]!r} (row {row + 1}) is neither the left nor the "
                         "right candidate nor 'tie'")
    return Pairs(left, right, outcome, candidates)


def scores_to_pairs(scores: Scores) -> Pairs:
    """Every pair of candidates scored by the same judge on the same item becomes one comparison."""
    item = scores.unit_item[scores.unit]
    cand = scores.unit_candidate[scores.unit]
    frame = pd.DataFrame({"item": item, "judge": scores.judge, "cand": cand, "s": scores.raw_score})
    m = frame.merge(frame, on=("item", "judge"))
    m = m[m.cand_x < m.cand_y]
    outcome = np.where(m.s_x > m.s_y, 0, np.where(m.s_x < m.s_y, 1, 2)).astype(np.int32)
    return Pairs(m.cand_x.to_numpy(np.int32), m.cand_y.to_numpy(np.int32), outcome, scores.candidates)

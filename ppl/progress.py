"""Progress on stderr for the command line: tqdm bars, and the library's log lines shown above them.

Library code reports through the `ppl` logger (`logging`), never `print`; a command runs inside
`reporting(quiet)`, which shows those INFO lines on stderr without breaking a bar, and `bar` is the
one progress bar every long command uses. `--quiet` turns both off.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOGGER = logging.getLogger("ppl")


def bar(total: int, desc: str, quiet: bool = False, unit: str = "problem", initial: int = 0) -> tqdm:
    """A progress bar on stderr (disabled when `quiet`), `initial` of `total` already done."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet, dynamic_ncols=True,
                initial=initial)


@contextlib.contextmanager
def reporting(quiet: bool = False) -> Iterator[None]:
    """Show the `ppl` logger's INFO lines on stderr for the duration (through tqdm), unless `quiet`."""
    if quiet:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[LOGGER]):
            yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)

"""The `ppl` command line.

Each command group lives next to the code it drives and exposes
`register(subparsers)`; this module only wires them together and turns
library errors into one-line messages with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that each define `register(subparsers)` adding one command group.
COMMAND_MODULES = (
    "ppl.commands.demo",
    "ppl.commands.solve",
    "ppl.commands.grade",
    "ppl.judges.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from models.loading import CheckpointError
    from ppl.errors import PPLError

    parser = build_parser()
    args = parser.parse_args(argv)
    _enable_compilation_cache()
    from ppl.progress import reporting

    try:
        with reporting(getattr(args, "quiet", False)):
            return int(args.run(args) or 0)
    except (PPLError, CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"ppl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"ppl {args.command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk, so a second `ppl demo` or `solve` skips compilation."""
    import os

    import jax

    path = os.environ.get("PPL_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ppl", "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


if __name__ == "__main__":
    sys.exit(main())

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
    "ppl.commands.countdown",
    "ppl.commands.arithmetic",
    "ppl.commands.generate",
    "ppl.judges.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # command group not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ppl.errors import PPLError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (PPLError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"ppl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

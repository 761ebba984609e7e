"""The ``cmrjax`` command line: thin wrappers that parse, validate and call the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; that function adds a parser
and sets ``func`` (called with the parsed namespace, returning an exit code). Subcommands whose module
is missing or needs an optional extra are reported clearly, never with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) for each subcommand, in help order.
_SUBCOMMANDS = [
    ("cmrjax.cli_simulate", "simulate"),
    ("cmrjax.cli_fit", "fit"),
    ("extraction.cli", "extract"),
    ("cmrjax.cli_experiments", "demo/reproduce"),
]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from cmrjax import __version__

    parser = argparse.ArgumentParser(
        prog="cmrjax",
        description="CMR (Context Maintenance and Retrieval) in JAX: simulate lag-CRPs, extract attention "
        "profiles of transformer heads, fit CMR to them, and reproduce the paper's analyses.",
    )
    parser.add_argument("--version", action="version", version=f"cmrjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, _ in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # an optional part is not installed
            if module.split(".")[0] not in str(e) and "cli_" not in str(e):
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"cmrjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"cmrjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmrjax {args.command}: interrupted; finished work is saved (rerun with --resume where offered)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

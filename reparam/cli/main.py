"""Entry point of the `reparam` command.

Subcommands live in ``reparam.cli.commands``; each module registers its own parser. A
`ReparamError` becomes one message with a hint on stderr and a non-zero exit (2 for usage or input
errors, 1 for a numeric mismatch); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from reparam import __version__
from reparam.errors import ReparamError

# Order in `reparam --help`; modules not listed here are appended alphabetically.
_COMMAND_ORDER = [
    "zoo",
    "expand",
    "convert",
    "export",
    "inspect",
    "verify",
    "deploy",
    "quantize",
    "slim",
    "bench",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line and a hint, exit 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n  hint: run '{self.prog} --help' for the options\n")
        raise SystemExit(2)


def _command_modules() -> list[str]:
    import reparam.cli.commands as pkg

    found = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    return [n for n in _COMMAND_ORDER if n in found] + [n for n in found if n not in _COMMAND_ORDER]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reparam",
        description="Fuse re-parameterized CNNs exactly, export them to ONNX / TensorRT, and verify "
        "that what you ship computes what you trained.",
    )
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _command_modules():
        importlib.import_module(f"reparam.cli.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ReparamError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"  hint: {exc.hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

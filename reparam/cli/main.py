"""Entry point of the `reparam` command.

Subcommands live in ``reparam.cli.commands``; each module registers its own parser. Exit codes:
0 success, 1 a numeric mismatch (`MismatchError`), 2 a usage or input error (`ReparamError`, and
environment failures such as an unwritable path or exhausted memory), 3 a bug in reparam. Errors
are one ``error:`` line and at most one ``hint:`` line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import os
import pkgutil
import sys
import traceback
import warnings
from typing import Any

import reparam.cli.commands as pkg
from reparam import __version__
from reparam.cli import console
from reparam.cli.commands import SUMMARIES
from reparam.errors import user_error_from

EXIT_BUG = 3


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        self.flag_names: dict[str, str] = {}  # parameter name -> the flag (or positional) that sets it
        super().__init__(*args, **kwargs)
        # On every (sub)parser, so `reparam convert ... --debug` works as well as `reparam --debug ...`.
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the Python traceback of an error",
        )
        self.add_argument(
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="no progress lines or notes on stderr (errors and warnings still appear)",
        )

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        self.nested_commands = [*getattr(self, "nested_commands", []), action]
        return action

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        self._remember_flag(names, action)
        return action

    def add_argument_group(self, *args, **kwargs):
        return self._recording(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return self._recording(super().add_mutually_exclusive_group(**kwargs))

    def _recording(self, group):
        """Arguments added to a group are remembered like the parser's own."""
        add = group.add_argument

        def add_argument(*names, **kwargs):
            action = add(*names, **kwargs)
            self._remember_flag(names, action)
            return action

        group.add_argument = add_argument
        return group

    def _remember_flag(self, names: tuple, action: argparse.Action) -> None:
        longs = [n for n in names if n.startswith("--")]
        if longs:
            shown = longs[0]
        elif names and names[0].startswith("-"):
            shown = names[0]
        else:
            shown = action.metavar or action.dest.upper()
        self.flag_names.setdefault(action.dest, shown)

    def error(self, message: str):  # usage errors: one line and a hint, exit 2
        sys.stderr.write(f"error: {message}\n  hint: run '{self.prog} --help' for the options\n")
        raise SystemExit(2)


def command_modules() -> list[str]:
    """The modules of ``reparam.cli.commands`` that are commands (``SUMMARIES`` names each), in
    the order of ``reparam --help``; the others are helpers the commands share."""
    found = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    return [name for name in SUMMARIES if name in found]


def _requested_command(argv: list[str]) -> str | None:
    """The command named on the command line: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, given the command line, of the command it names alone: the
    others get a parser that only names them, so that `reparam --help` or a mistyped command
    answers without importing torch."""
    parser = _Parser(
        prog="reparam",
        description="Fuse re-parameterized CNNs exactly, export them to ONNX / TensorRT, and verify "
        "that what you ship computes what you trained.",
    )
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = None if argv is None else _requested_command(argv)
    for name in command_modules():
        if argv is None or name == wanted:
            importlib.import_module(f"reparam.cli.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
    _remember_command_parsers(sub)
    return parser


def _remember_command_parsers(sub: Any, parent: dict[str, str] | None = None) -> None:
    """Each (nested) command parser records itself, so an error can name that command's flags."""
    for command in sub.choices.values():
        for name, flag in (parent or {}).items():
            command.flag_names.setdefault(name, flag)
        command.set_defaults(command_parser=command)
        for nested in getattr(command, "nested_commands", ()):
            _remember_command_parsers(nested, command.flag_names)


def allow_local_imports(args: argparse.Namespace) -> None:
    """Let code the user chose be found in the current directory, as `python -m` would find it.

    One rule for every command: a ``module:factory`` given to ``--arch`` or ``--as-arch``, and the
    classes of a pickled module loaded with ``--trust-pickle``. A file never chooses code to import.
    """

    named = any(":" in (getattr(args, flag, None) or "") for flag in ("arch", "as_arch"))
    trusted = bool(getattr(args, "trust_pickle", False))
    if (named or trusted) and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _flags_of(args: argparse.Namespace) -> dict[str, str]:
    """Parameter -> flag for the command that ran (its own options, then the shared ones)."""
    command = getattr(args, "command_parser", None)
    names = dict(getattr(command, "flag_names", {}))
    names.update(getattr(args, "field_flags", {}) or {})
    return names


def report_error(exc: BaseException, debug: bool) -> int:
    """Write ``exc`` to stderr as one error line (and a hint line); return the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    user = user_error_from(exc)
    if user is None:
        detail = _one_line(f"{type(exc).__name__}: {exc}")[:300]
        sys.stderr.write(f"error: internal error ({detail}); this is a bug in reparam\n")
        sys.stderr.write(
            "  hint: re-run with --debug for the traceback and report it with the command line\n"
        )
        return EXIT_BUG
    sys.stderr.write(f"error: {console.speak(_one_line(user.message))}\n")
    if user.hint:
        sys.stderr.write(f"  hint: {console.speak(_one_line(user.hint))}\n")
    return user.exit_code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.warning(_one_line(str(message)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    console.configure(quiet=getattr(args, "quiet", False), flags=_flags_of(args))
    allow_local_imports(args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:
        return report_error(exc, getattr(args, "debug", False))


def entry() -> None:
    """The installed `reparam` script and `python -m reparam`: run the command, then end the process.

    The interpreter's own shutdown would tear down every module and run full garbage collections
    over the millions of objects torch.export, sympy and the exporters leave behind: about 1.5 s
    after a `deploy` on a 2-core machine, after the last output was written. Like mypy's
    ``hard_exit``, the process ends once the exit handlers have run and every stream is flushed.
    """
    code = main()
    atexit._run_exitfuncs()  # noqa: SLF001 -- what normal shutdown runs first (temp files, logging)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not change the exit code
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)  # output a C library buffered in stdio
    os._exit(code)


if __name__ == "__main__":
    entry()

"""docs/cli.md, generated from the parser so that the reference cannot drift from the code.

Regenerate with ``python -m reparam.cli.reference > docs/cli.md``; tests/cli/test_reference.py
fails when the file is out of date.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from reparam.cli.main import build_parser

WIDTH = "100"  # help is wrapped to $COLUMNS; fixed so the page does not depend on the terminal

HEADER = """\
# `reparam` command-line reference

Generated from the parser by `python -m reparam.cli.reference > docs/cli.md`; do not edit by hand.

Conventions shared by every command:

- Exit codes: 0 success, 1 a numeric mismatch, 2 a usage or input error (unreadable or unwritable
  paths and inputs too large for memory included), 3 a bug in reparam.
- An error is one `error:` line and at most one `hint:` line on stderr; `--debug` adds the traceback.
- Progress lines, notes and warnings go to stderr (`--quiet` silences progress and notes); stdout
  holds results only, and JSON only where `--json` is given.
- `--input-shape` is N×C×H×W everywhere. Without it a command uses the shape an artifact records,
  else 1×C×224×224, and says so in a note.
- A checkpoint is the first positional argument; `.pt2` / `.onnx` files describe their own
  architecture, input shape and precision.
- All outputs of a command are written as one transaction: all of them, or none.
"""


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    # argparse has no public accessor for subparsers; the action's `choices` holds them.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _sections(parser: argparse.ArgumentParser, prefix: str) -> Iterator[str]:
    for name, sub in _subcommands(parser):
        title = f"{prefix} {name}"
        yield f"## `{title}`\n\n```text\n{sub.format_help().rstrip()}\n```\n"
        yield from _sections(sub, title)


def render() -> str:
    """The whole reference page as markdown."""

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        top = f"## `reparam`\n\n```text\n{parser.format_help().rstrip()}\n```\n"
        return "\n".join([HEADER, top, *_sections(parser, "reparam")])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


if __name__ == "__main__":
    print(render(), end="")

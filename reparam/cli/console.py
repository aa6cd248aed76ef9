"""What the CLI tells a user besides its results: notes, warnings and progress, all on stderr.

Results go to stdout (JSON with ``--json``); everything here goes to stderr so that stdout stays
parseable. ``--quiet`` silences progress and notes, never errors.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from typing import Any

_state: dict[str, Any] = {"quiet": False, "start": time.monotonic(), "flags": {}}
# `name` or `name=value`; a command may map either (a value can stand for a flag of its own)
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)(?:=([A-Za-z0-9_.]+))?`")


def configure(*, quiet: bool, flags: Mapping[str, str] | None = None) -> None:
    """Set the verbosity and the command's parameter -> flag names; restart the clock."""
    _state["quiet"] = quiet
    _state["start"] = time.monotonic()
    _state["flags"] = dict(flags or {})


def speak(text: str, flags: Mapping[str, str] | None = None) -> str:
    """Library messages name parameters in backticks; show the flags that set them instead."""
    names = _state["flags"] if flags is None else flags
    return _PARAMETER.sub(lambda m: _flag_for(m, names), text)


def _flag_for(match: re.Match, names: Mapping[str, str]) -> str:
    whole, name, value = match[0].strip("`"), match[1], match[2]
    if whole in names:
        return names[whole]
    if name in names:
        return names[name] if value is None else f"{names[name]} {value}"
    return match[0]


def note(text: str) -> None:
    """A one-line note (a choice made for the user, an assumption)."""
    if not _state["quiet"]:
        sys.stderr.write(f"note: {speak(text)}\n")


def warning(text: str) -> None:
    """A one-line warning (something the user should look at; shown even with --quiet)."""
    sys.stderr.write(f"warning: {speak(text)}\n")


def progress(text: str) -> None:
    """A status line for a step that may take a while, with the time since the command started."""
    if not _state["quiet"]:
        elapsed = time.monotonic() - _state["start"]
        sys.stderr.write(f"[{elapsed:6.1f}s] {text}\n")
        sys.stderr.flush()


class Bar:
    """A progress display for counted steps: a rich bar with counts and time left on a terminal,
    else a status line whenever the step changes or half a minute passed. Silent with ``--quiet``.

    Call it as ``bar(label, done, total)`` (a `reparam.verify.core.Tick`); `close` when done.
    """

    EVERY_S = 30.0

    def __init__(self) -> None:
        self._rich = None
        self._task = None
        self._said: tuple[str, int] = ("", -1)
        self._said_at = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        if _state["quiet"]:
            return
        if sys.stderr.isatty():
            self._show_bar(label, done, total)
            return
        due = label != self._said[0] or done == total or time.monotonic() - self._said_at >= self.EVERY_S
        if due and (label, done) != self._said:
            progress(f"verifying: {label} ({done}/{total} batch runs)")
            self._said, self._said_at = (label, done), time.monotonic()

    def _show_bar(self, label: str, done: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._rich is None:
            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(label, total=total)
        self._rich.update(self._task, description=label, completed=done, total=total)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

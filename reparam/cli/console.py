"""What the CLI tells a user besides its results: notes, warnings and progress, all on stderr.

Results go to stdout (JSON with ``--json``); everything here goes to stderr so that stdout stays
parseable. ``--quiet`` silences progress and notes, never errors.
"""

from __future__ import annotations

import sys
import time

_state = {"quiet": False, "start": time.monotonic()}


def configure(*, quiet: bool) -> None:
    """Set the verbosity for this command and restart its clock."""
    _state["quiet"] = quiet
    _state["start"] = time.monotonic()


def note(text: str) -> None:
    """A one-line note (a choice made for the user, an assumption)."""
    if not _state["quiet"]:
        sys.stderr.write(f"note: {text}\n")


def warning(text: str) -> None:
    """A one-line warning (something the user should look at; shown even with --quiet)."""
    sys.stderr.write(f"warning: {text}\n")


def progress(text: str) -> None:
    """A status line for a step that may take a while, with the time since the command started."""
    if not _state["quiet"]:
        elapsed = time.monotonic() - _state["start"]
        sys.stderr.write(f"[{elapsed:6.1f}s] {text}\n")
        sys.stderr.flush()

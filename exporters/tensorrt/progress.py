"""Build progress: TensorRT's IProgressMonitor phases as a rich progress bar, or plain lines off a TTY."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class BuildProgress:
    """Receives phase start/step/finish events (TensorRT's IProgressMonitor protocol) and shows them.

    ``rich``: None picks a rich bar on a TTY and plain lines elsewhere. ``step_complete`` returns
    False once ``cancel()`` was called, which makes TensorRT stop the build.
    """

    def __init__(self, stream: TextIO | None = None, rich: bool | None = None):
        self.stream = stream or sys.stderr
        self.use_rich = self.stream.isatty() if rich is None else rich
        self.cancelled = False
        self.phases: dict[str, dict[str, Any]] = {}
        self._progress = None

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _depth(self, name: str) -> int:
        depth, parent = 0, self.phases.get(name, {}).get("parent")
        while parent:
            depth += 1
            parent = self.phases.get(parent, {}).get("parent")
        return depth

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.phases[phase_name] = {
            "parent": parent_phase,
            "steps": int(num_steps),
            "done": 0,
            "start": time.perf_counter(),
            "task": None,
        }
        if self.use_rich:
            if self._progress is None:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=Console(file=self.stream),
                    transient=True,
                )
                self._progress.start()
            indent = "  " * self._depth(phase_name)
            self.phases[phase_name]["task"] = self._progress.add_task(
                f"{indent}{phase_name}", total=max(1, num_steps)
            )
        else:
            self._line(f"{'  ' * self._depth(phase_name)}{phase_name}: {num_steps} step(s)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        phase = self.phases.get(phase_name)
        if phase is not None:
            phase["done"] = int(step) + 1
            if self._progress is not None and phase["task"] is not None:
                self._progress.update(phase["task"], completed=phase["done"])
        return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        phase = self.phases.get(phase_name)
        if phase is None:
            return
        seconds = time.perf_counter() - phase["start"]
        if self._progress is not None and phase["task"] is not None:
            self._progress.remove_task(phase["task"])
        if not self.use_rich:
            self._line(f"{'  ' * self._depth(phase_name)}{phase_name}: done in {seconds:.1f} s")
        phase["task"] = None

    def cancel(self) -> None:
        """Ask TensorRT to stop at the next step."""
        self.cancelled = True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A ``trt.IProgressMonitor`` forwarding to ``progress``."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()

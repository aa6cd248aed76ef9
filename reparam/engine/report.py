"""The conversion report: what was fused where, what was left alone and why, and the numbers."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from reparam.engine.base import LeftAlone
from reparam.engine.record import FusionEntry
from reparam.profile import ModelStats


@dataclass
class CheckSummary:
    """Outcome of the built-in equivalence check on the example inputs."""

    passed: bool
    max_abs_error: float
    relative_error: float  # max |ref - deploy| / max |ref|
    tolerance: float
    max_abs_output: float
    input_shapes: list[list[int]]
    dtype: str
    diverging_blocks: list[str] = field(default_factory=list)
    reference_noise: float | None = None  # the original's fp32-vs-float64 error, when it set the tolerance

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ConversionReport:
    """Everything a user needs to trust (or question) a conversion."""

    passes: list[str] = field(default_factory=list)
    fusions: list[FusionEntry] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    check: CheckSummary | None = None
    converted_from_eval_copy: bool = False
    tracing: str = "whole model"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # wall time of each stage of convert(); "passes" holds one entry per pass
    seconds: dict[str, Any] = field(default_factory=dict)

    def fused_by_pass(self) -> dict[str, list[FusionEntry]]:
        """Fusions grouped by the pass that made them, in pass order."""
        out: dict[str, list[FusionEntry]] = {p: [] for p in self.passes}
        for e in self.fusions:
            out.setdefault(e.pass_name, []).append(e)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": list(self.passes),
            "fused": {p: [e.to_dict() for e in es] for p, es in self.fused_by_pass().items()},
            "left_alone": [x.to_dict() for x in self.left_alone],
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "check": self.check.to_dict() if self.check else None,
            "converted_from_eval_copy": self.converted_from_eval_copy,
            "tracing": self.tracing,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "seconds": dict(self.seconds),
        }

    def timing_line(self) -> str:
        """Where the conversion's time went, as one line ("" when not measured)."""
        s = self.seconds
        if not s:
            return ""
        passes = s.get("passes") or {}
        parts = [f"{stage} {s[stage]:.2f}" for stage in ("prepare", "capture", "reference") if stage in s]
        if "rewrite" in s:
            slowest = sorted(passes.items(), key=lambda kv: -kv[1])[:3]
            detail = ", ".join(f"{name} {seconds:.2f}" for name, seconds in slowest)
            parts.append(f"rewrite {s['rewrite']:.2f}" + (f" ({detail})" if detail else ""))
        if "check" in s:
            parts.append(f"deploy run and check {s['check']:.2f}")
        return f"time: {s.get('total', 0.0):.2f} s = " + ", ".join(parts)

    def summary_line(self) -> str:
        """One line: layer counts, parameters and MACs before -> after, and the check's error."""
        b, a = self.before, self.after
        parts = []
        if b and a:
            for kind in sorted(set(b.modules) | set(a.modules)):
                if "Conv" in kind or "BatchNorm" in kind or kind == "Linear":
                    parts.append(f"{kind} {b.modules.get(kind, 0)} -> {a.modules.get(kind, 0)}")
            parts.append(f"parameters {b.params:,} -> {a.params:,}")
            if b.macs is not None and a.macs is not None:
                parts.append(f"MACs {b.macs:,} -> {a.macs:,}")
        if self.check:
            parts.append(
                f"check {'passed' if self.check.passed else 'FAILED'} "
                f"(relative error {self.check.relative_error:.2g})"
            )
        return "converted: " + ", ".join(parts)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def render(self, plain: bool = False, width: int = 110, max_fusions: int | None = None) -> str:
        """The report as text: rich tables, or plain text with ``plain=True``.

        With more than ``max_fusions`` fusions they are summarized per pass (the JSON has them all).
        """
        if not plain:
            try:
                return self._render_rich(width, max_fusions)
            except ImportError:
                pass
        return self._render_plain(max_fusions)

    def _rows(
        self, max_fusions: int | None = None
    ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
        b, a = self.before, self.after
        stats = []
        if b and a:
            stats.append(("parameters", f"{b.params:,}", f"{a.params:,}"))
            if b.macs is not None and a.macs is not None:
                stats.append(("MACs", f"{b.macs:,}", f"{a.macs:,}"))
            for kind in sorted(set(b.modules) | set(a.modules)):
                stats.append((kind, str(b.modules.get(kind, 0)), str(a.modules.get(kind, 0))))
        fusions = []
        by_pass = self.fused_by_pass()
        if max_fusions is not None and len(self.fusions) > max_fusions:
            # One row per pass: long models would print hundreds of rows.
            for p, entries in by_pass.items():
                if entries:
                    names = [e.fused for e in entries]
                    shown = ", ".join(names[:4]) + (
                        f", ... ({len(names) - 4} more)" if len(names) > 4 else ""
                    )
                    fusions.append((p, f"{len(names)} modules", shown))
            return stats, fusions
        for p, entries in by_pass.items():
            for e in entries:
                fusions.append((p, e.fused, e.detail or ", ".join(e.sources)))
        return stats, fusions

    def _summary_lines(self) -> list[str]:
        lines = [f"tracing: {self.tracing}"]
        if self.converted_from_eval_copy:
            lines.append("the model was in training mode: an eval-mode copy was converted")
        if self.check:
            c = self.check
            verdict = "PASSED" if c.passed else "FAILED"
            lines.append(
                f"check {verdict}: max abs error {c.max_abs_error:.3g}, relative to max |output| "
                f"{c.relative_error:.3g} (tolerance {c.tolerance:.3g}, {c.dtype}, inputs {c.input_shapes})"
            )
            if c.reference_noise is not None:
                lines.append(
                    f"tolerance = max(1e-5, 10 x the original's own fp32 rounding error "
                    f"{c.reference_noise:.3g}, measured against float64)"
                )
            if c.diverging_blocks:
                lines.append(f"diverging blocks: {', '.join(c.diverging_blocks)}")
        else:
            lines.append("check: not run")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        timing = self.timing_line()
        if timing:
            lines.append(timing)
        return lines

    def _render_plain(self, max_fusions: int | None = None) -> str:
        stats, fusions = self._rows(max_fusions)
        out = ["reparam conversion report", ""]
        if fusions:
            out.append("fused:")
            out += [f"  [{p}] {name}: {detail}" for p, name, detail in fusions]
        else:
            out.append("fused: nothing")
        if self.left_alone:
            out.append("left alone:")
            out += [f"  [{x.pass_name}] {x.where}: {x.reason}" for x in self.left_alone]
        if stats:
            out.append(f"{'':24}{'before':>16}{'after':>16}")
            out += [f"{k:24}{b:>16}{a:>16}" for k, b, a in stats]
        out += self._summary_lines()
        return "\n".join(out)

    def _render_rich(self, width: int, max_fusions: int | None = None) -> str:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        stats, fusions = self._rows(max_fusions)
        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=False, color_system=None)
        t = Table(title="fused", show_lines=False)
        for col in ("pass", "deploy module", "what"):
            t.add_column(col, overflow="fold")
        for row in fusions:
            t.add_row(*(Text(c) for c in row))
        console.print(t if fusions else "fused: nothing")
        if self.left_alone:
            t = Table(title="left alone")
            for col in ("pass", "where", "why"):
                t.add_column(col, overflow="fold")
            for x in self.left_alone:
                t.add_row(Text(x.pass_name), Text(x.where), Text(x.reason))
            console.print(t)
        if stats:
            t = Table(title="model")
            t.add_column("")
            t.add_column("before", justify="right")
            t.add_column("after", justify="right")
            for row in stats:
                t.add_row(*row)
            console.print(t)
        for line in self._summary_lines():
            console.print(line, highlight=False, markup=False)
        return buf.getvalue().rstrip()

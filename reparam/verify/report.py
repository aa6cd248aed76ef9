"""The verification report: terminal table (rich), JSON, markdown and a per-block error plot."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reparam.equivalence.compare import CandidateResult
from reparam.equivalence.tolerance import Tolerance
from reparam.io import atomic_path, atomic_write_text
from reparam.verify.quant import LayerRisk

SCHEMA_VERSION = 1

_STYLES = [
    {"marker": "o", "linestyle": "-", "markersize": 7},
    {"marker": "s", "linestyle": "--", "markersize": 5},
    {"marker": "^", "linestyle": ":", "markersize": 5},
    {"marker": "x", "linestyle": "-.", "markersize": 6},
]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0.0:
            return "0"
        if 1e-3 <= abs(v) < 1e4:
            return f"{v:.{digits + 1}g}"
        return f"{v:.{digits - 1}e}"
    return str(v)


def _cos(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.7f}"


@dataclass
class VerifyReport:
    """Everything one verification run found."""

    reference: str
    tolerance: Tolerance
    inputs: dict[str, Any] = field(default_factory=dict)
    candidates: list[CandidateResult] = field(default_factory=list)
    quant_risk: list[LayerRisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.candidates) and all(c.passed for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "passed": self.passed,
            "reference": self.reference,
            "tolerance": self.tolerance.to_dict(),
            "inputs": self.inputs,
            "candidates": [c.to_dict() for c in self.candidates],
            "quantization_risk": [r.to_dict() for r in self.quant_risk],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(_json_safe(self.to_dict()), indent=2, sort_keys=False)

    # -- markdown -----------------------------------------------------------------------------
    def metrics_rows(self) -> list[list[str]]:
        """One row per candidate output: the table shared by markdown, terminal and assertion text."""
        rows = []
        for c in self.candidates:
            label = (
                c.name if c.tolerance in (None, self.tolerance.profile.name) else f"{c.name} [{c.tolerance}]"
            )
            if not c.outputs:
                rows.append([label, "-", "PASS" if c.passed else "FAIL"] + ["-"] * (len(self.HEADERS) - 3))
            for o in c.outputs.values():
                m = o.metrics
                rows.append(
                    [
                        label,
                        o.name,
                        "PASS" if o.passed else "FAIL",
                        _fmt(m.scale_rel),
                        _fmt(m.ref_noise),
                        _fmt(m.max_abs),
                        _fmt(m.mean_abs),
                        _fmt(m.p99_abs),
                        _fmt(m.max_rel),
                        _cos(m.cosine),
                        _fmt(m.top1),
                        str(m.nonfinite),
                    ]
                )
        return rows

    HEADERS = [
        "candidate",
        "output",
        "status",
        "scale-rel",
        "ref noise",
        "max abs",
        "mean abs",
        "p99 abs",
        "max rel",
        "cosine",
        "top-1",
        "NaN/Inf",
    ]

    def to_markdown(self) -> str:
        lines = [f"## reparam verify: {'PASS' if self.passed else 'FAIL'}", ""]
        p = self.tolerance.profile
        limits = ", ".join(
            f"{k} {v:g}"
            for k, v in (
                ("scale-rel ≤", p.max_scale_rel),
                ("cosine ≥", p.min_cosine),
                ("top-1 ≥", p.min_top1),
            )
            if v is not None
        )
        lines.append(f"- reference: `{self.reference}`")
        if p.max_scale_rel is not None and p.noise_multiple:
            limits = limits.replace(
                f"scale-rel ≤ {p.max_scale_rel:g}",
                f"scale-rel ≤ max({p.max_scale_rel:g}, {p.noise_multiple:g} × ref noise)",
            )
        lines.append(f"- tolerance: `{p.name}` ({limits})")
        if self.tolerance.atol or self.tolerance.rtol:
            lines.append(f"- elementwise overrides: atol {self.tolerance.atol}, rtol {self.tolerance.rtol}")
        if self.inputs:
            lines.append("- inputs: " + ", ".join(f"{k} `{v}`" for k, v in self.inputs.items()))
        lines += ["", "| " + " | ".join(self.HEADERS) + " |", "|" + "---|" * len(self.HEADERS)]
        lines += ["| " + " | ".join(r) + " |" for r in self.metrics_rows()]
        failures = [(c.name, line) for c in self.candidates for line in c.failure_summary()]
        if failures:
            lines += ["", "### Failures", ""] + [f"- **{n}**: {line}" for n, line in failures]
        for c in self.candidates:
            if c.divergence and c.divergence.note:
                lines.append(f"- **{c.name}**: {c.divergence.note}")
        block_cands = [c for c in self.candidates if c.divergence and c.divergence.blocks]
        if block_cands:
            lines += ["", "### Per-block scale-relative error (execution order)", ""]
            lines += [
                "| block | " + " | ".join(c.name for c in block_cands) + " |",
                "|---|" + "---|" * len(block_cands),
            ]
            order: list[str] = []
            for c in block_cands:
                order += [b.name for b in c.divergence.blocks if b.name not in order]
            for name in order:
                cells = []
                for c in block_cands:
                    b = next((b for b in c.divergence.blocks if b.name == name), None)
                    cells.append("-" if b is None else _fmt(b.scale_rel) + ("" if b.passed else " ✗"))
                lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        if self.quant_risk:
            lines += [
                "",
                "### Quantization risk (per-channel weight range, max/median)",
                "",
                "| fused layer | channels | ratio before | ratio after | max abs after | risk | widened by |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| `{r.fused}` | {r.channels} | {_fmt(r.before_ratio)} | {_fmt(r.after_ratio)} | "
                f"{_fmt(r.after_max)} | {r.risk} | {f'`{r.culprit}`: {r.reason}' if r.culprit else '-'} |"
                for r in self.quant_risk
            ]
            remedies = list(dict.fromkeys(x for r in self.quant_risk for x in r.remedies))
            if remedies:
                lines += ["", "Remedies: " + "; ".join(remedies) + "."]
        if self.notes:
            lines += ["", "### Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    # -- terminal -----------------------------------------------------------------------------
    def render(self, console=None) -> None:
        """Print the report as rich tables (to ``console`` or stdout)."""
        from rich.console import Console
        from rich.table import Table

        if console is None:
            console = Console()
            if not console.is_terminal:  # piped / CI logs: do not squeeze the table to 80 columns
                console = Console(width=max(console.width, 150))
        table = Table(title=f"reparam verify ({self.tolerance.profile.name})", show_lines=False)
        for h in self.HEADERS:
            table.add_column(h, justify="left" if h in ("candidate", "output") else "right", no_wrap=True)
        for row in self.metrics_rows():
            style = "green" if row[2] == "PASS" else "bold red"
            table.add_row(*row[:2], f"[{style}]{row[2]}[/]", *row[3:])
        console.print(table)
        for c in self.candidates:
            for line in c.failure_summary():
                console.print(f"[red]{c.name}[/]: {line}", highlight=False)
            if c.divergence and c.divergence.note:
                console.print(f"{c.name}: {c.divergence.note}", highlight=False)
        flagged = [r for r in self.quant_risk if r.risk != "low"]
        if flagged:
            qt = Table(title="int8 quantization risk (per-channel weight range max/median)")
            for h in ("fused layer", "ratio before", "ratio after", "risk", "widened by"):
                qt.add_column(h)
            for r in flagged:
                qt.add_row(r.fused, _fmt(r.before_ratio), _fmt(r.after_ratio), r.risk, r.culprit or "-")
            console.print(qt)
        elif self.quant_risk and self.passed:  # "low" next to a FAIL would read as "int8 is fine"
            console.print(f"int8 quantization risk: low for all {len(self.quant_risk)} fused layers")
        for n in self.notes:
            console.print(f"note: {n}", highlight=False)
        verdict = "[bold green]PASS[/]" if self.passed else "[bold red]FAIL[/]"
        console.print(f"result: {verdict}")

    def render_text(self, width: int = 160) -> str:
        """The terminal rendering as plain text (for assertion messages)."""
        from rich.console import Console

        buf = io.StringIO()
        self.render(Console(file=buf, width=width, no_color=True, highlight=False))
        return buf.getvalue()

    # -- files --------------------------------------------------------------------------------
    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    def write_markdown(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_markdown())

    def write_plot(self, path: str | os.PathLike) -> str | None:
        """Plot per-block scale-relative error; returns a note instead when matplotlib is missing."""
        try:
            # a Figure of its own draws with Agg and leaves pyplot's backend alone (a caller's
            # interactive backend is not switched, as `matplotlib.use(..., force=True)` did)
            from matplotlib.figure import Figure
        except ImportError:
            return "matplotlib is not installed; no plot written (pip install 'reparam[plot]')"
        fig = Figure(figsize=(10, 4.5))
        ax = fig.subplots()
        plotted = False
        names = merged_order(
            [b.name for b in c.divergence.blocks]
            for c in self.candidates
            if c.divergence and c.divergence.blocks
        )
        for c in self.candidates:
            if not (c.divergence and c.divergence.blocks):
                continue
            xs = [names.index(b.name) for b in c.divergence.blocks]
            # Exact zeros cannot be drawn on a log axis; show them at the float64 floor.
            ys = [
                max(b.scale_rel, 1e-18) if math.isfinite(b.scale_rel) else float("nan")
                for b in c.divergence.blocks
            ]
            style = _STYLES[len(ax.lines) % len(_STYLES)]  # overlapping candidates stay distinguishable
            ax.plot(xs, ys, label=c.name, **style)
            if c.divergence.first_diverging:
                i = names.index(c.divergence.first_diverging)
                ax.axvline(i, color="red", linestyle=":", alpha=0.6)
            plotted = True
        limit = self.tolerance.profile.max_scale_rel
        if plotted:
            ax.set_yscale("log")
            if limit is not None:
                ax.axhline(limit, color="gray", linestyle="--", label=f"{self.tolerance.profile.name} limit")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("scale-relative error of block output")
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5, 0.5, "no block boundaries available", ha="center", va="center", transform=ax.transAxes
            )
            ax.set_axis_off()
        ax.set_title(f"per-block error ({'PASS' if self.passed else 'FAIL'})")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        return None


def merged_order(sequences: Iterable[Sequence[str]]) -> list[str]:
    """One order holding every name, each sequence's relative order kept (each is in execution order).

    A name only some candidates report (a stage output) goes right after its predecessor in the
    sequence that has it, not at the end, so plotted lines run forward.
    """
    names: list[str] = []
    for seq in sequences:
        at = -1
        for name in seq:
            if name in names:
                at = names.index(name)
            else:
                at += 1
                names.insert(at, name)
    return names


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj

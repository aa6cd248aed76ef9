"""Benchmark results: targets (reported, never asserted), markdown and rich rendering, JSON."""

from __future__ import annotations

import io
import json
import shutil
import statistics
from dataclasses import dataclass, field
from typing import Any

from reparam.bench.conversion import ConversionCost
from reparam.bench.deploy_cost import TARGET_WALL_S, DeployCost
from reparam.bench.harness import Stats
from reparam.bench.latency import FORMS, LatencyCell
from reparam.bench.machine import MachineInfo

# Targets from the project brief. They are shown met/missed; the benchmark never fails on them.
DEPLOY_OVER_PLAIN_MAX = 1.02
CONVERSION_MODEL = "acb_resnet50"
CONVERSION_MAX_S = 2.0
PEAK_OVER_PARAMS_MAX = 3.0
EXPORT_MAX_S = 10.0
TIMM_RATIO_MAX = 1.0  # conversion incl. check vs the model authors' own unchecked fusion
VERIFY_RATIO_MAX = 1.3  # streaming verify vs running reference and candidates in their runtimes
# Above this share of all CPUs used by other processes during a measurement, its absolute times are
# not trustworthy (paired ratios degrade more gracefully).
BUSY_LOAD = 0.10

PLAIN_NOTE = (
    "`plain` is the zoo's plain counterpart with the same layer shapes as the deploy form, with its "
    "BatchNorm folded by the same engine: a fairly deployed plain network."
)
METHOD_NOTE = (
    "The three forms are timed interleaved (train, deploy, plain, train, ...) after warm-up; latencies "
    "are medians with the interquartile range; ratios are computed per round (paired) and summarized by "
    "their median with the 10th-90th percentile range."
)


@dataclass
class Target:
    """One target: what, the measured value, the limit, and whether it was met."""

    name: str
    value: float | None
    limit: float
    unit: str = ""
    label: str = ""  # short form for table cells, e.g. "time<=2s"

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    def mark(self, judged: bool = True) -> str:
        """met / MISSED / n/a; "not judged" for a run whose sizes the targets do not apply to."""
        return {True: "met", False: "MISSED", None: "n/a"}[self.met] if judged else "not judged"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


def latency_target(cell: LatencyCell) -> Target:
    """deploy/plain (median of paired ratios) <= 1.02."""
    return Target(
        f"deploy/plain {cell.model} {cell.backend} b{cell.batch}",
        cell.ratios["deploy/plain"].median,
        DEPLOY_OVER_PLAIN_MAX,
        "x",
    )


def conversion_targets(cost: ConversionCost) -> list[Target]:
    """Conversion time (ACB-ResNet-50 only), peak memory and export time targets of one row."""
    out = []
    if cost.model == CONVERSION_MODEL:
        out.append(
            Target(
                f"conversion incl. check (cold) {cost.model}",
                cost.cold_s,
                CONVERSION_MAX_S,
                "s",
                f"time<={CONVERSION_MAX_S:g}s",
            )
        )
    if cost.source != "timm":
        # judged on the zoo's ResNet-50-sized models; timm's small ones hold more activation memory
        # at 224x224 than parameter bytes, so their ratio says little about the conversion itself
        out.append(
            Target(
                f"peak memory / parameter bytes {cost.model}",
                cost.peak_over_params,
                PEAK_OVER_PARAMS_MAX,
                "x",
                f"mem<={PEAK_OVER_PARAMS_MAX:g}x",
            )
        )
    if cost.paired_ratios:
        out.append(
            Target(
                f"conversion incl. check / timm's own reparameterize {cost.model}",
                statistics.median(cost.paired_ratios),
                TIMM_RATIO_MAX,
                "x",
                f"vs timm<={TIMM_RATIO_MAX:g}x",
            )
        )
    if cost.source != "timm":
        out.append(
            Target(
                f"ONNX export + simplify {cost.model}",
                cost.export_total_s,
                EXPORT_MAX_S,
                "s",
                f"export<={EXPORT_MAX_S:g}s",
            )
        )
    return out


def deploy_targets(cost: DeployCost) -> list[Target]:
    """`reparam deploy` wall time (median of the rounds) and its peak resident memory."""
    out = [Target(f"reparam deploy wall time {cost.model}", cost.deploy_wall_s, TARGET_WALL_S, "s")]
    limit = cost.peak_limit_bytes
    if limit:
        mib = 1024 * 1024
        out.append(
            Target(f"reparam deploy peak RSS {cost.model}", cost.deploy_peak_bytes / mib, limit / mib, "MiB")
        )
    return out


def verify_target(cost: Any) -> Target:
    """Streaming verify / raw runs (median of paired rounds)."""
    return Target(f"verify / raw runs {cost.model}", cost.ratio.median, VERIFY_RATIO_MAX, "x")


@dataclass
class BenchResults:
    """Everything one `reparam bench` run measured, with the context to read it."""

    command: str
    machine: MachineInfo
    settings: dict[str, Any]
    latency: list[LatencyCell] = field(default_factory=list)
    conversion: list[ConversionCost] = field(default_factory=list)
    deploy: list[DeployCost] = field(default_factory=list)
    verify: list[Any] = field(default_factory=list)  # reparam.bench.verify_stream.VerifyStreamCost
    notes: list[str] = field(default_factory=list)
    judged: bool = True  # False for --quick: tiny models and inputs, targets do not apply

    def targets(self) -> list[Target]:
        out = [latency_target(c) for c in self.latency]
        for cost in self.conversion:
            out.extend(conversion_targets(cost))
        for d in self.deploy:
            out.extend(deploy_targets(d))
        out.extend(verify_target(v) for v in self.verify)
        return out

    def busy_count(self) -> int:
        """Measurements during which other processes used more than BUSY_LOAD of the CPUs."""
        rows = [*self.latency, *self.conversion, *self.deploy]
        return sum(1 for x in rows if x.other_load is not None and x.other_load > BUSY_LOAD)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": self.machine.to_dict(),
            "settings": self.settings,
            "latency": [c.to_dict() for c in self.latency],
            "conversion": [c.to_dict() for c in self.conversion],
            "deploy": [d.to_dict() for d in self.deploy],
            "verify": [v.to_dict() for v in self.verify],
            "targets": [t.to_dict() for t in self.targets()] if self.judged else [],
            "targets_judged": self.judged,
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --- formatting -----------------------------------------------------------------------------------


def fmt_ms(stats: Stats) -> str:
    """``12.3 (11.9-12.8)``: median and interquartile range, in milliseconds."""
    ms = stats.scaled(1e3)
    digits = 2 if ms.median < 10 else 1
    return f"{ms.median:.{digits}f} ({ms.q1:.{digits}f}-{ms.q3:.{digits}f})"


def fmt_ratio(stats: Stats) -> str:
    """``1.63 [1.58-1.70]``: median of paired ratios and its 10th-90th percentile range."""
    return f"{stats.median:.3f} [{stats.p10:.3f}-{stats.p90:.3f}]"


def fmt_load(value: float | None) -> str:
    """Share of all CPUs used by other processes during a measurement; flagged when the row is unreliable."""
    if value is None:
        return "-"
    return f"{value:.0%}" + (" busy" if value > BUSY_LOAD else "")


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


LATENCY_HEADER = [
    "model",
    "backend",
    "batch",
    "train ms",
    "deploy ms",
    "plain ms",
    "train/deploy",
    "deploy/plain",
    "deploy/plain <= 1.02",
    "others' CPU",
]
CONVERSION_HEADER = [
    "model",
    "params MB",
    "trace s",
    "passes s",
    "check s",
    "total s",
    "peak MB",
    "peak/params",
    "export s",
    "simplify s",
    "legacy export+simplify s",
    "targets",
    "others' CPU",
]


def latency_rows(cells: list[LatencyCell], judged: bool = True) -> list[list[str]]:
    """Table rows of the latency cells (strings)."""
    rows = []
    for c in cells:
        rows.append(
            [
                f"{c.model} vs {c.plain_model}",
                c.backend,
                str(c.batch),
                *(fmt_ms(c.forms[f]) for f in FORMS),
                fmt_ratio(c.ratios["train/deploy"]),
                fmt_ratio(c.ratios["deploy/plain"]),
                latency_target(c).mark(judged),
                fmt_load(c.other_load),
            ]
        )
    return rows


def conversion_rows(costs: list[ConversionCost], judged: bool = True) -> list[list[str]]:
    """Table rows of the conversion costs (strings)."""
    rows = []
    for c in costs:
        marks = ", ".join(f"{t.label} {t.mark(judged)}" for t in conversion_targets(c))
        total = _fmt_s(c.total_s)
        if len(c.run_totals_s) > 1:
            total += f" (cold {c.cold_s:.2f})"
        if c.reference_s is not None:
            total += f" (timm: {c.reference_s:.2f})"
        rows.append(
            [
                c.model,
                _fmt_mb(c.param_bytes),
                _fmt_s(c.trace_s),
                _fmt_s(c.passes_s),
                _fmt_s(c.check_s),
                total,
                _fmt_mb(c.peak_rss_delta_bytes),
                _fmt_x(c.peak_over_params),
                _fmt_s(c.export_s),
                _fmt_s(c.simplify_s),
                _fmt_s(c.legacy_export_s),
                marks,
                fmt_load(c.other_load),
            ]
        )
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(results: BenchResults) -> str:
    """The results as a markdown document: machine, command, tables, targets, notes."""
    s = results.settings
    out = ["# reparam benchmark results", "", "## Machine", ""]
    out += [f"- {line}" for line in results.machine.lines()]
    out += ["", "## Command", "", "```", results.command, "```", ""]
    out += [f"Settings: {', '.join(f'{k}={v}' for k, v in s.items())}.", ""]
    if results.latency:
        out += ["## Latency", "", METHOD_NOTE + " " + PLAIN_NOTE, ""]
        out += _md_table(LATENCY_HEADER, latency_rows(results.latency, results.judged))
        out.append("")
    if results.conversion:
        out += [
            "## Conversion cost",
            "",
            "`reparam.engine.convert(check=True)` at batch 1, each model in a fresh process, converted "
            f"{results.settings.get('conversion_runs', 1)} time(s) there: times are those of the median run "
            "and, in brackets, of the first (cold) run, as a one-off `reparam convert` sees it; the time target "
            "is judged on the cold run; every run's total is in the JSON. Memory: the highest run. timm rows: "
            "one untimed round of each side first (its memory is the row's: shown, not judged, as these small "
            "models' activations at 224x224 exceed their parameter bytes), then paired rounds (times: their "
            "median; in brackets, the first of them). trace = the engine's `torch.fx` capture, passes = "
            "`run_passes`, check = the rest of `convert` (reference run, shape run, deploy run, comparison, "
            "model statistics, copying what the deploy model shares with the original). Peak = resident "
            "memory above the process's RSS just before the conversion; params = parameter bytes of the "
            "training model. One cold `export_onnx(simplify=True)` of the deploy model (the first export "
            "in the process): simplify = onnxsim time as the exporter reports it, export = the rest "
            "(tracing, checks, shape inference, saving); the target is judged on it (torch.onnx's default "
            "exporter). legacy = the same export with the legacy TorchScript exporter (`dynamo=False`, "
            "`--legacy-exporter`), run next in the same process.",
            "",
        ]
        out += _md_table(CONVERSION_HEADER, conversion_rows(results.conversion, results.judged))
        methods = sorted({c.memory_method for c in results.conversion if c.memory_method})
        out += ["", *(f"Memory measured as {m}." for m in methods)]
        for c in results.conversion:
            out += [f"- {c.model}: {n}" for n in c.notes]
        out.append("")
    out += _deploy_section(results.deploy)
    out += _verify_section(results.verify)
    targets = results.targets()
    if targets and not results.judged:
        out += [
            "## Targets",
            "",
            "Not judged: this run used tiny models and inputs (`quick`); the targets apply to the "
            "full-size run (`reparam bench`).",
            "",
        ]
    elif targets:
        met = sum(t.met is True for t in targets)
        missed = [t for t in targets if t.met is False]
        busy = results.busy_count()
        out += ["## Targets", "", f"{met} of {len(targets)} targets met (reported, not asserted).", ""]
        if missed:
            out += [f"- MISSED {t.name}: {t.value:.3f}{t.unit} > {t.limit:g}{t.unit}" for t in missed]
            out.append("")
        reached = [t for t in targets if t.met is True]
        if reached:
            out += [f"- met {t.name}: {t.value:.3f}{t.unit} <= {t.limit:g}{t.unit}" for t in reached]
            out.append("")
        if busy:
            out += [
                f"{busy} measurement(s) ran while other processes used more than {BUSY_LOAD:.0%} of the CPUs "
                "(marked busy): their absolute times are not reliable; rerun them on a quiet machine.",
                "",
            ]
    if results.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    return "\n".join(out)


DEPLOY_STAGES = ("start", "load", "convert", "pt2", "onnx", "verify")


def _deploy_section(costs: list[DeployCost]) -> list[str]:
    """Deploy vs its parts: stage times of both (medians of the rounds), the paired ratio, memory."""
    if not costs:
        return []
    out = [
        "## Deploy vs its parts",
        "",
        "Each round runs `reparam deploy CKPT --arch MODEL -o OUT --to onnx --force` and then the same work "
        "from the public pieces (load, `convert`, `save_artifact`, `export_onnx`, `verify` of the in-memory "
        "model, the `.pt2` and the ONNX file), each in a fresh process with its imports; deploy's stages "
        "are read from its progress lines (start = interpreter and imports; verify runs to the process's "
        "end). Ratio: deploy wall / parts wall per round. Peak: each process's maximum resident set; "
        "limit: the parts process's RSS after importing and building the model plus 3x the parameter bytes. "
        "The legacy exporter row is the same command with `--legacy-exporter` (model.onnx from the "
        "TorchScript exporter), run in the same rounds; its ratio is its wall / the default deploy's.",
        "",
    ]
    header = ["model", "form", *(f"{s} s" for s in DEPLOY_STAGES), "wall s", "peak MiB", "deploy/parts"]
    rows = []
    mib = 1024 * 1024
    for c in costs:
        forms = [("deploy", c.deploy, c.ratio), ("parts", c.parts, None)]
        if c.legacy:
            forms.append(("deploy, legacy exporter", c.legacy, c.legacy_ratio))
        for form, runs, paired in forms:
            stages = c.median_stages(runs)
            wall = statistics.median(r.wall_s for r in runs)
            peak = max(r.peak_rss_bytes for r in runs) / mib
            ratio = fmt_ratio(paired) if paired is not None else ""
            cells = [_fmt_s(stages.get(s)) if s in stages else "-" for s in DEPLOY_STAGES]
            rows.append([c.model, form, *cells, f"{wall:.2f}", f"{peak:.0f}", ratio])
    out += _md_table(header, rows)
    for c in costs:
        out += [""] + [f"- {c.model}: {n}" for n in c.notes]
        out.append(f"- {c.model}: others' CPU {fmt_load(c.other_load)}")
    return [*out, ""]


def _verify_section(costs: list[Any]) -> list[str]:
    """Streaming verify vs the raw runs of the reference and every candidate."""
    if not costs:
        return []
    out = [
        "## Verify vs raw runtimes",
        "",
        "`reparam.verify.verify` on the same batches, candidates and batch size as running the reference "
        "and each candidate in its own runtime, outputs dropped; interleaved rounds, ratio per round.",
        "",
    ]
    header = ["model", "samples", "batch", "candidates", "verify s", "raw s", "verify/raw", "passed"]
    rows = [
        [
            v.model,
            str(v.samples),
            str(v.batch_size),
            ", ".join(v.candidates),
            f"{v.verify_s.median:.2f}",
            f"{v.raw_s.median:.2f}",
            fmt_ratio(v.ratio),
            str(v.passed),
        ]
        for v in costs
    ]
    return [*out, *_md_table(header, rows), ""]


def render_console(results: BenchResults, width: int | None = None) -> str:
    """The tables as rich text for the terminal (at least 150 columns wide, so cells do not wrap)."""

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buf = io.StringIO()
    width = width or max(150, shutil.get_terminal_size((150, 40)).columns)
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    for line in results.machine.lines():
        console.print(line, highlight=False, markup=False)
    for title, header, rows in (
        (
            "latency: median (IQR) ms; paired ratios median [p10-p90]",
            LATENCY_HEADER,
            latency_rows(results.latency, results.judged),
        ),
        ("conversion cost", CONVERSION_HEADER, conversion_rows(results.conversion, results.judged)),
    ):
        if not rows:
            continue
        table = Table(title=Text(title))
        for i, h in enumerate(header):
            table.add_column(
                h,
                justify="left" if i < 2 or h == "targets" else "right",
                overflow="fold",
                no_wrap=i == 0,
            )
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)
    for line in [*_deploy_section(results.deploy), *_verify_section(results.verify)]:
        console.print(line, highlight=False, markup=False)
    for cost in results.conversion:
        for note in cost.notes:
            console.print(f"note: {cost.model}: {note}", highlight=False, markup=False)
    for note in results.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if results.busy_count():
        console.print(
            f"warning: {results.busy_count()} measurement(s) ran while other processes used more than "
            f"{BUSY_LOAD:.0%} of the CPUs (marked busy); rerun them on a quiet machine",
            highlight=False,
            markup=False,
        )
    return buf.getvalue().rstrip()

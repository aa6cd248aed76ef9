"""Render a slim report as markdown and as the paper's figure (per-block scale shares, PNG)."""

from __future__ import annotations

import io
from typing import Any

from reparam.errors import require


def _fmt_alloc(alloc: list[int]) -> str:
    return " / ".join(str(c) for c in alloc)


def to_markdown(report: dict[str, Any]) -> str:
    """Summary lines and one table row per SA block: channels per scale before and after."""
    r = report
    lines = [
        f"# Slim allocation: {r['arch']}",
        "",
        f"- input: {'×'.join(str(d) for d in r['input_shape'])}",
        f"- budget: {r['budget']} = {r['budget_macs']:,} MACs; seed {r['seed_macs']:,} MACs",
        f"- slim: {r['macs']:,} MACs ({r['macs_fraction_of_seed']:.1%} of the seed, "
        f"{r['shortfall_fraction_of_budget']:.2%} under the budget"
        + (", limited by channel granularity" if r["granularity_limited"] else "")
        + ")",
        f"- parameters: {r['seed_params']:,} → {r['params']:,}",
        f"- SA channels: {r['sa_channels_before']:,} → {r['sa_channels_after']:,} "
        f"({r['removed_dead_channels']} removed with γ = 0, folded exactly)",
        f"- weights: {'freshly initialised' if r['reinit'] else 'kept channels copied from the seed'}",
        "",
        "| block | path | side | scales | before | after |",
        "|---:|---|---:|---|---|---|",
    ]
    for b in r["blocks"]:
        lines.append(
            f"| {b['index']} | `{b['path']}` | {b['side']} | {_fmt_alloc(b['scales'])} | "
            f"{_fmt_alloc(b['before'])} | {_fmt_alloc(b['after'])} |"
        )
    return "\n".join(lines) + "\n"


def to_png(report: dict[str, Any]) -> bytes:
    """Stacked bars of each block's per-scale channel shares after slimming (PNG bytes)."""
    matplotlib = require("matplotlib", "plot", "The slim report's figure")
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    blocks = report["blocks"]
    n_scales = max(len(b["after"]) for b in blocks)
    fig = Figure(figsize=(max(6.0, 0.35 * len(blocks) + 2), 3.2))
    ax = fig.subplots()
    bottom = [0.0] * len(blocks)
    for s in range(n_scales):
        shares = [(b["after"][s] / max(sum(b["after"]), 1)) if s < len(b["after"]) else 0.0 for b in blocks]
        label = f"scale {blocks[0]['scales'][s]}" if s < len(blocks[0]["scales"]) else f"scale #{s + 1}"
        ax.bar(range(len(blocks)), shares, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, shares)]
    ax.set_xlabel("SA block")
    ax.set_ylabel("share of channels")
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels([str(b["index"]) for b in blocks], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{report['arch']}: per-scale channel shares at {report['macs'] / 1e9:.3g} GMACs", fontsize=9
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()

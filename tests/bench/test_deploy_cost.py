"""Deploy vs its parts: stage times from deploy's progress lines, targets and the rendered section."""

from __future__ import annotations

import pytest

from reparam.bench.deploy_cost import DeployCost, ProcessRun, stages_from_progress
from reparam.bench.harness import summarize
from reparam.bench.machine import describe_machine
from reparam.bench.report import BenchResults, deploy_targets, render_markdown

LINES = [
    (1.5, "[   0.0s] loading ckpt.pth"),
    (2.0, "note: something said in between"),
    (2.5, "[   1.0s] converting"),
    (3.0, "[   1.5s] writing model.pt2"),
    (4.0, "[   2.5s] exporting model.onnx"),
    (7.0, "[   5.5s] verifying 3 candidates on 2 batch(es) of 8x3x224x224"),
    (8.0, "[   6.5s] verifying: model.onnx (3/6 batch runs)"),
]


def test_each_stage_lasts_until_the_next_begins():
    stages = stages_from_progress(LINES, wall_s=9.0)
    assert stages == pytest.approx(
        {"start": 1.5, "load": 1.0, "convert": 0.5, "pt2": 1.0, "onnx": 3.0, "verify": 2.0}
    )
    assert sum(stages.values()) == pytest.approx(9.0)
    assert stages_from_progress([(1.0, "no progress here")], 2.0) == {}


def _cost(deploy_wall: float, peak: int) -> DeployCost:
    deploy = [ProcessRun(deploy_wall, peak, {"load": 1.0, "verify": 2.0})]
    parts = [
        ProcessRun(
            deploy_wall / 1.1, peak, {"load": 1.0}, baseline_rss_bytes=400 << 20, param_bytes=100 << 20
        )
    ]
    return DeployCost("acb_resnet50", [1, 3, 224, 224], deploy, parts, summarize([1.1]), ["a note"], 0.0)


def test_deploy_targets_are_wall_time_and_peak_over_the_baseline():
    met = {t.name: t.met for t in deploy_targets(_cost(7.5, 600 << 20))}
    assert met == {
        "reparam deploy wall time acb_resnet50": True,
        "reparam deploy peak RSS acb_resnet50": True,
    }
    missed = deploy_targets(_cost(9.0, 800 << 20))
    assert [t.met for t in missed] == [False, False]
    assert missed[1].limit == pytest.approx(700)  # 400 MiB baseline + 3 x 100 MiB of parameters


def test_the_section_shows_both_forms_and_the_paired_ratio():
    results = BenchResults("reparam bench --deploy", describe_machine(), {}, deploy=[_cost(7.5, 600 << 20)])
    text = render_markdown(results)
    assert "## Deploy vs its parts" in text
    rows = [line for line in text.splitlines() if line.startswith("| acb_resnet50 |")]
    assert len(rows) == 2 and "1.100" in rows[0] and rows[1].split("|")[2].strip() == "parts"
    assert results.to_dict()["deploy"][0]["deploy_wall_s"] == 7.5


def test_the_legacy_exporter_row_pairs_its_wall_time_with_the_default_deploy():
    cost = _cost(10.0, 600 << 20)
    cost.legacy = [ProcessRun(8.0, 700 << 20, {"load": 1.0, "onnx": 1.5})]
    assert cost.legacy_ratio is not None and cost.legacy_ratio.median == pytest.approx(0.8)
    text = render_markdown(BenchResults("reparam bench --deploy", describe_machine(), {}, deploy=[cost]))
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| acb_resnet50 |")]
    assert [r[2].strip() for r in rows] == ["deploy", "parts", "deploy, legacy exporter"]
    assert "0.800" in rows[2][-2] and rows[2][-3].strip() == "700"  # ratio to the deploy; its own peak
    assert _cost(10.0, 600 << 20).legacy_ratio is None  # a run without the row: nothing to pair

import json

import pytest

from reparam.bench.conversion import ConversionCost
from reparam.bench.harness import summarize
from reparam.bench.latency import LatencyCell
from reparam.bench.machine import MachineInfo, parse_cpuinfo
from reparam.bench.report import (
    BenchResults,
    Target,
    conversion_targets,
    fmt_load,
    fmt_ms,
    fmt_ratio,
    latency_target,
    render_console,
    render_markdown,
)

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000 @ 3.00GHz
physical id\t: 0
core id\t: 0

processor\t: 1
model name\t: Test CPU 9000 @ 3.00GHz
physical id\t: 0
core id\t: 0

processor\t: 2
model name\t: Test CPU 9000 @ 3.00GHz
physical id\t: 0
core id\t: 1
"""


def _machine() -> MachineInfo:
    return MachineInfo("Test CPU", 4, 2, 2, "Linux", "3.11", {"torch": "2.13.0"}, 2, 2)


def _cell(deploy_over_plain: float, backend: str = "torch") -> LatencyCell:
    train = [0.030, 0.031, 0.032]
    deploy = [0.010, 0.011, 0.012]
    plain = [d / deploy_over_plain for d in deploy]
    return LatencyCell(
        model="acb_resnet18",
        plain_model="resnet18",
        backend=backend,
        batch=1,
        input_shape=[1, 3, 224, 224],
        forms={"train": summarize(train), "deploy": summarize(deploy), "plain": summarize(plain)},
        ratios={
            "train/deploy": summarize([t / d for t, d in zip(train, deploy)]),
            "deploy/plain": summarize([d / p for d, p in zip(deploy, plain)]),
        },
        repeats=3,
        warmup=1,
        number=1,
    )


def _cost(model="acb_resnet50", total=1.5, peak=300 * 2**20, export=3.0) -> ConversionCost:
    return ConversionCost(
        model=model,
        source="reparam zoo",
        input_shape=[1, 3, 224, 224],
        width=1.0,
        param_bytes=100 * 2**20,
        total_s=total,
        trace_s=0.1,
        passes_s=1.0,
        check_s=total - 1.1,
        peak_rss_delta_bytes=peak,
        memory_method="test",
        export_s=export,
        simplify_s=0.5,
    )


def test_parse_cpuinfo_model_and_physical_cores():
    assert parse_cpuinfo(CPUINFO) == ("Test CPU 9000 @ 3.00GHz", 2)
    assert parse_cpuinfo("") == (None, None)


def test_target_marks():
    assert Target("x", 1.0, 1.02).mark() == "met"
    assert Target("x", 1.03, 1.02).mark() == "MISSED"
    assert Target("x", None, 1.02).mark() == "n/a"
    assert latency_target(_cell(1.01)).met is True
    assert latency_target(_cell(1.10)).met is False


def test_conversion_targets_time_only_for_acb_resnet50():
    by_label = {t.label: t for t in conversion_targets(_cost())}
    assert set(by_label) == {"time<=2s", "mem<=3x", "export<=10s"}
    assert by_label["time<=2s"].met and by_label["export<=10s"].met
    assert by_label["mem<=3x"].value == pytest.approx(3.0) and by_label["mem<=3x"].met
    assert not conversion_targets(_cost(peak=301 * 2**20))[1].met
    assert [t.label for t in conversion_targets(_cost(model="sknet50"))] == ["mem<=3x", "export<=10s"]
    assert conversion_targets(_cost(total=2.5))[0].met is False
    missing = ConversionCost.from_dict({**_cost().to_dict(), "export_s": None, "peak_rss_delta_bytes": None})
    assert [t.mark() for t in conversion_targets(missing)] == ["met", "n/a", "n/a"]


def test_formatting():
    s = summarize([0.010, 0.011, 0.012])
    assert fmt_ms(s) == "11.0 (10.5-11.5)"
    assert fmt_ms(summarize([0.001, 0.002, 0.003])) == "2.00 (1.50-2.50)"
    assert fmt_ratio(summarize([1.0, 1.5, 2.0])) == "1.500 [1.100-1.900]"


def test_markdown_has_machine_command_tables_and_targets():
    results = BenchResults(
        command="reparam bench acb_resnet18 --threads 2",
        machine=_machine(),
        settings={"threads": 2},
        latency=[_cell(1.0), _cell(1.05, backend="ort-all")],
        conversion=[_cost(), _cost(model="sknet50", peak=900 * 2**20)],
        notes=["timm is not importable"],
    )
    md = render_markdown(results)
    assert "- CPU: Test CPU" in md and "torch 2.13.0" in md
    assert "```\nreparam bench acb_resnet18 --threads 2\n```" in md
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | backend |"))
    rows = lines[header + 2 : header + 4]
    assert rows[0].split(" | ")[-2:] == ["met", "- |"] and "1.000 [1.000-1.000]" in rows[0]
    assert rows[1].split(" | ")[-2:] == ["MISSED", "- |"] and "| ort-all |" in rows[1]
    # train/deploy per round: 30/10, 31/11, 32/12 -> median 31/11, p10 between 32/12 and 31/11
    assert "2.818 [2.697-2.964]" in rows[0]
    conv = [line for line in lines if line.startswith("| sknet50 |")]
    assert len(conv) == 1 and "9.00x" in conv[0] and "mem<=3x MISSED" in conv[0]
    # 2 latency + (3 + 2) conversion targets; one latency and one memory target missed.
    assert "5 of 7 targets met" in md
    assert "- MISSED deploy/plain acb_resnet18 ort-all b1: 1.050x > 1.02x" in md
    assert "- met deploy/plain acb_resnet18 torch b1: 1.000x <= 1.02x" in md
    assert "- timm is not importable" in md
    # the same numbers from a --quick run: every target is labelled "not judged"
    results.judged = False
    quick = render_markdown(results)
    assert "MISSED" not in quick and "met |" not in quick and "Not judged" in quick
    assert "mem<=3x not judged" in quick and results.to_dict()["targets"] == []


def test_markdown_escapes_pipes_in_cells():
    cost = _cost(model="a|b")
    md = render_markdown(BenchResults("cmd", _machine(), {}, conversion=[cost]))
    assert "| a\\|b |" in md


def test_console_rendering_and_json_round_trip():
    results = BenchResults("cmd", _machine(), {"threads": 2}, latency=[_cell(1.0)], conversion=[_cost()])
    text = render_console(results, width=220)
    assert "acb_resnet18 vs resnet18" in text and "1.000 [1.000-1.000]" in text
    assert "time<=2s met" in text
    data = json.loads(results.to_json())
    assert data["latency"][0]["ratios"]["deploy/plain"]["median"] == pytest.approx(1.0)
    assert data["conversion"][0]["peak_over_params"] == pytest.approx(3.0)
    assert [t["met"] for t in data["targets"]] == [True, True, True, True]
    assert ConversionCost.from_dict(data["conversion"][0]) == _cost()


def test_busy_measurements_are_flagged():
    quiet, busy = _cell(1.0), _cell(1.0, backend="ort-all")
    quiet.other_load, busy.other_load = 0.02, 0.45
    cost = _cost()
    cost.other_load = 0.0
    assert fmt_load(None) == "-" and fmt_load(0.02) == "2%" and fmt_load(0.45) == "45% busy"
    results = BenchResults("cmd", _machine(), {}, latency=[quiet, busy], conversion=[cost])
    assert results.busy_count() == 1
    md = render_markdown(results)
    assert "| 45% busy |" in md and "| 2% |" in md and "| 0% |" in md
    assert "1 measurement(s) ran while other processes used more than 10% of the CPUs" in md
    assert "rerun them on a quiet machine" in render_console(results, width=240)
    quiet_only = BenchResults("cmd", _machine(), {}, latency=[quiet])
    assert "other processes" not in render_markdown(quiet_only)


def test_conversion_time_target_is_judged_on_the_cold_run():
    cost = _cost(total=1.1)
    cost.run_totals_s = [2.5, 1.0, 1.1]
    assert cost.cold_s == 2.5
    time_target = conversion_targets(cost)[0]
    assert time_target.value == 2.5 and time_target.met is False
    row = next(
        line
        for line in render_markdown(BenchResults("cmd", _machine(), {}, conversion=[cost])).splitlines()
        if line.startswith("| acb_resnet50 |")
    )
    assert "| 1.10 (cold 2.50) |" in row and "time<=2s MISSED" in row

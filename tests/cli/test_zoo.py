"""`reparam zoo`: table and JSON listing."""

from __future__ import annotations

import json

import pytest

from reparam.cli.main import main
from reparam.zoo import list_models


def test_zoo_json_lists_every_model_with_params(capsys):
    assert main(["zoo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in data["models"]}
    assert sorted(rows) == list_models()
    assert data["width"] == 1.0
    assert rows["resnet50"]["params"] == pytest.approx(25.6e6, rel=0.01)
    assert rows["resnet18"]["params"] == pytest.approx(11.7e6, rel=0.01)
    assert rows["acb_resnet18"]["counterpart"] == "resnet18"
    assert all(r["description"] and r["params"] > 0 for r in rows.values())


def test_zoo_table_filters_by_name_and_width(capsys):
    assert main(["zoo", "resnet18", "repvgg_a0", "--width", "0.25"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["model", "params"]
    assert [line.split()[0] for line in out[1:3]] == ["resnet18", "repvgg_a0"]
    assert "width 0.25" in out[-1]


def test_zoo_unknown_name_is_a_user_error(capsys):
    assert main(["zoo", "sknet5O"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'sknet5O'" in err and "sknet50" in err


def test_zoo_rejects_non_positive_width(capsys):
    assert main(["zoo", "--width", "0"]) == 2
    assert "--width" in capsys.readouterr().err

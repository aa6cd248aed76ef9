"""The application layer: typed requests, one resolver each, one function per command, nothing printed."""

from __future__ import annotations

import json

import pytest
import torch

from reparam import api
from reparam.checkpoint import save_checkpoint
from reparam.describe import describe
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

KWARGS = {"num_classes": 3, "width": 0.25}


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("repvgg_a0", **KWARGS)).eval()
    path = tmp_path / "r.pth"
    save_checkpoint(model, path, "repvgg_a0", KWARGS)
    return path


def test_input_spec_has_one_default_rule(ckpt):
    model = api.ModelSource(ckpt).load().model
    shape, note = api.InputSpec().resolve_shape(model)
    assert shape == (1, 3, 224, 224) and "224" in note
    assert api.InputSpec(input_shape=(2, 3, 16, 16)).resolve_shape(model) == ((2, 3, 16, 16), None)
    batches = api.InputSpec(input_shape=(2, 3, 16, 16), batches=3, seed=1).resolve(model)
    again = api.InputSpec(input_shape=(2, 3, 16, 16), batches=3, seed=1).resolve(model)
    assert batches.shape == (2, 3, 16, 16) and len(batches.data) == 3
    assert all((a["input"] == b["input"]).all() for a, b in zip(batches.data, again.data))


def test_requests_refuse_contradictions_naming_parameters(tmp_path):
    with pytest.raises(ReparamError, match="`inputs` and `input_shape`"):
        api.InputSpec(inputs=tmp_path / "x.npz", input_shape=(1, 3, 8, 8))
    with pytest.raises(ReparamError, match="`batch_size`"):
        api.InputSpec(batch_size=0)
    with pytest.raises(ReparamError, match="`calib` only applies with `int8`"):
        api.DeployOptions(calib=tmp_path / "c.npz").check()


def test_judge_uses_the_artifact_precision_unless_a_profile_is_chosen():
    assert api.Judge().tolerance("fp16").profile.name == "fp16"
    assert api.Judge().tolerance().profile.name == "fp32"
    assert api.Judge("int8").tolerance("fp16").profile.name == "int8"
    assert api.Judge(atol=0.5).tolerance().atol["*"] == 0.5


def test_model_source_loads_and_says_what_it_chose(ckpt):
    loaded = api.ModelSource(ckpt).load()
    assert loaded.arch == "repvgg_a0" and loaded.arch_kwargs == KWARGS and not loaded.model.training
    with pytest.raises(ReparamError, match="does not exist"):
        api.ModelSource(ckpt.with_name("missing.pth")).load()


def test_commands_print_nothing_and_return_what_they_wrote(tmp_path, ckpt, capsys):
    source, inputs = api.ModelSource(ckpt), api.InputSpec(input_shape=(1, 3, 32, 32))
    converted = api.convert(source, tmp_path / "m.pt2", inputs=inputs, report=tmp_path / "r.json")
    assert [p.name for p in converted.files] == ["m.pt2", "m.pt2.report.json", "r.json"]
    assert all(p.is_file() for p in converted.files) and converted.result.report.check.passed
    assert json.loads((tmp_path / "r.json").read_text())["passes"]
    outcome = api.verify(api.ModelSource(ckpt), [tmp_path / "m.pt2"], inputs=inputs)
    assert outcome.passed and outcome.report.candidates[0].name == "m.pt2"
    info = api.inspect(tmp_path / "m.pt2")
    assert info["kind"] == "pt2" and info["metadata"]["metadata"]["arch"] == "repvgg_a0"
    assert describe(tmp_path / "m.pt2").arch == "repvgg_a0"
    assert capsys.readouterr() == ("", "")


def test_convert_checks_the_output_before_loading_the_model(tmp_path):
    never = api.ModelSource(tmp_path / "not-read.pth")
    with pytest.raises(ReparamError, match="must end in .pt2"):
        api.convert(never, tmp_path / "m.onnx")
    with pytest.raises(ReparamError, match="unknown pass"):
        api.convert(never, tmp_path / "m.pt2", passes=["no_such_pass"])

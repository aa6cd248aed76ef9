"""`reparam.deploy`: the pipeline as a library call with typed requests (the CLI calls it)."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch

import reparam
from reparam.api import deploy_command
from reparam.checkpoint import save_checkpoint
from reparam.describe import describe
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm
from reparam.verify import core as verify_core
from reparam.zoo import create_model


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("repvgg_a0", num_classes=3, width=0.25)).eval()
    path = tmp_path / "r.pth"
    save_checkpoint(model, path, "repvgg_a0", {"num_classes": 3, "width": 0.25})
    return path


def test_deploy_library_call_writes_a_verified_directory(tmp_path, ckpt):
    lines: list[str] = []
    result = reparam.deploy(
        reparam.ModelSource(ckpt),
        tmp_path / "out",
        options=reparam.DeployOptions(targets=[]),
        inputs=reparam.InputSpec(input_shape=(1, 3, 32, 32)),
        progress=lines.append,
    )
    assert result.passed and result.output == (tmp_path / "out").resolve()
    assert result.summary.startswith("converted:") and any("verifying" in line for line in lines)
    names = sorted(p.name for p in result.output.iterdir())
    assert names == sorted(result.files) and "model.pt2" in names and "model.onnx" not in names
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["arch"] == "repvgg_a0" and manifest["arch_kwargs"] == {"num_classes": 3, "width": 0.25}
    d = describe(result.output / "model.pt2")
    assert (d.arch, d.input_shape) == ("repvgg_a0", ["batch", 3, 32, 32])


def test_deploy_input_error_leaves_nothing(tmp_path, ckpt):
    with pytest.raises(ReparamError, match=r"unknown target\(s\) in `targets`"):
        reparam.deploy(reparam.ModelSource(ckpt), tmp_path / "out", options=reparam.DeployOptions(["coreml"]))
    with pytest.raises(ReparamError, match="architecture"):
        reparam.deploy(
            reparam.ModelSource(ckpt, arch="acb_resnet18"),
            tmp_path / "out",
            inputs=reparam.InputSpec(input_shape=(1, 3, 32, 32)),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.pth"]


@pytest.mark.parametrize(("chunk", "cyclic"), [(None, False), (None, True), (1, False)])
def test_deploy_lets_the_training_model_go_before_exporting(tmp_path, ckpt, monkeypatch, chunk, cyclic):
    """Inputs that fit in one chunk: its outputs are computed first and the model is freed (a model
    in a reference cycle too); more inputs: it is run batch by batch by the verifier, so it is held."""
    if chunk is not None:
        monkeypatch.setattr(verify_core, "CHUNK_BATCHES", chunk)
    trained, alive = [], []
    convert, save = deploy_command.convert, deploy_command.save_artifact

    def converting(model, *args, **kwargs):
        if cyclic:
            model.__dict__["loop"] = [model]
        trained.append(weakref.ref(model))
        return convert(model, *args, **kwargs)

    def saving(*args, **kwargs):
        alive.append(trained[0]() is not None)
        return save(*args, **kwargs)

    monkeypatch.setattr(deploy_command, "convert", converting)
    monkeypatch.setattr(deploy_command, "save_artifact", saving)
    gc.disable()  # only deploy's own release may free it
    try:
        result = reparam.deploy(
            reparam.ModelSource(ckpt),
            tmp_path / "out",
            options=reparam.DeployOptions(targets=[]),
            inputs=reparam.InputSpec(input_shape=(1, 3, 32, 32)),
        )
    finally:
        gc.enable()
    assert result.passed and alive == [chunk is not None]
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["model_class"].endswith(".RepVGG") and result.report.quant_risk


@pytest.mark.parametrize("chunk", [None, 1])
def test_verify_lets_a_checkpoint_reference_go_before_the_candidates_run(tmp_path, ckpt, monkeypatch, chunk):
    """As deploy does: inputs that fit in one chunk are compared with outputs computed up front."""
    from reparam import runners
    from reparam.api import requests, verify

    deployed = reparam.deploy(
        reparam.ModelSource(ckpt), tmp_path / "out", inputs=reparam.InputSpec(input_shape=(1, 3, 32, 32))
    )
    if chunk is not None:
        monkeypatch.setattr(verify_core, "CHUNK_BATCHES", chunk)
    trained, alive = [], []
    load, runner_for = requests.ModelSource.load, runners.runner_for

    def loading(self, *args, **kwargs):
        loaded = load(self, *args, **kwargs)
        trained.append(weakref.ref(loaded.model))
        return loaded

    def opening(*args, **kwargs):
        alive.append(trained[0]() is not None)
        return runner_for(*args, **kwargs)

    monkeypatch.setattr(requests.ModelSource, "load", loading)
    monkeypatch.setattr(runners, "runner_for", opening)
    gc.disable()  # only verify's own release may free it
    try:
        outcome = verify(
            reparam.ModelSource(ckpt),
            [deployed.output / "model.pt2", deployed.output / "model.onnx"],
            inputs=reparam.InputSpec(input_shape=(1, 3, 32, 32)),
        )
    finally:
        gc.enable()
    assert outcome.passed and len(outcome.report.candidates) == 2
    assert alive == [chunk is not None] and len(trained) == 1  # loaded once: no candidate needed it again
    assert outcome.report.quant_risk  # the int8 table, read from the weights before the model went

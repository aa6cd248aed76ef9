"""Runners: named numpy in/out, the naming convention, input validation, runner_for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reparam.errors import ReparamError
from reparam.numerics import scale_relative_error
from reparam.runners import OnnxRuntimeRunner, Runner, TensorRTRunner, TorchRunner, runner_for
from tests.exporters._models import TwoOutputs, tiny_net

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from reparam.exporters.onnx import export_onnx

    path = tmp_path_factory.mktemp("r") / "m.onnx"
    export_onnx(tiny_net(), torch.randn(1, 3, 16, 16), path, dynamo=False)
    return path


def test_torch_runner_module():
    model = tiny_net()
    runner = TorchRunner(model)
    out = runner.run({"input": X})
    assert list(out) == ["output"] == runner.output_names and runner.input_names == ["input"]
    np.testing.assert_array_equal(out["output"], model(torch.from_numpy(X)).detach().numpy())


def test_torch_runner_restores_training_mode():
    model = tiny_net().train()
    a = TorchRunner(model).run({"input": X})["output"]
    assert model.training
    np.testing.assert_array_equal(a, tiny_net()(torch.from_numpy(X)).detach().numpy())  # ran in eval mode


def test_torch_runner_several_outputs():
    out = TorchRunner(TwoOutputs().eval()).run({"input": X})
    assert list(out) == ["output0", "output1"] and out["output1"].shape == (2, 4)


def test_torch_runner_pt2_and_exported_program(tmp_path):
    from reparam.artifact import save_artifact

    model = tiny_net()
    save_artifact(model, (torch.from_numpy(X),), tmp_path / "m.pt2")
    ref = model(torch.from_numpy(X)).detach().numpy()
    runner = runner_for(tmp_path / "m.pt2")
    assert isinstance(runner, TorchRunner) and runner.output_names == ["output"]  # known before any run
    assert scale_relative_error(ref[:1], runner.run({"input": X[:1]})["output"]) <= 1e-6  # dynamic batch
    assert scale_relative_error(ref, runner.run({"input": X})["output"]) <= 1e-6
    program = torch.export.export(model, (torch.from_numpy(X),))
    assert scale_relative_error(ref, TorchRunner(program).run({"input": X})["output"]) <= 1e-6


def test_onnxruntime_runner_matches_torch(onnx_file):
    ref = tiny_net()(torch.from_numpy(X)).detach().numpy()
    for level in ("all", "disable"):
        runner = OnnxRuntimeRunner(onnx_file, optimization=level, threads=1)
        assert runner.input_names == ["input"] and runner.output_names == ["output"]
        assert scale_relative_error(ref, runner.run({"input": X})["output"]) <= 1e-5
    assert runner.input_specs[0].describe() == "input: float32[batch,3,16,16]"


@pytest.mark.parametrize(
    ("feed", "match"),
    [
        ({"x": X}, "missing \\['input'\\], unknown \\['x'\\]"),
        ({"input": X.astype(np.float64)}, "dtype float64, expected float32"),
        ({"input": X[:, :2]}, "shape \\[2, 2, 16, 16\\]"),
        ({"input": X[0]}, "does not fit"),
        ({"input": X.tolist()}, "not a numpy array"),
    ],
)
def test_bad_inputs_list_the_expected_inputs(onnx_file, feed, match):
    runner = OnnxRuntimeRunner(onnx_file)
    with pytest.raises(ReparamError, match=match) as err:
        runner.run(feed)
    assert "input: float32[batch,3,16,16]" in str(err.value)


def test_torch_runner_validates_names_and_dtype():
    runner = TorchRunner(tiny_net())
    with pytest.raises(ReparamError, match="wrong input names") as err:
        runner.run({"images": X})
    assert "input: float32" in err.value.hint
    with pytest.raises(ReparamError, match="dtype"):
        runner.run({"input": X.astype(np.float16)})


def test_runner_errors(tmp_path, onnx_file):
    with pytest.raises(ReparamError, match="optimization level"):
        OnnxRuntimeRunner(onnx_file, optimization="max")
    with pytest.raises(ReparamError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ReparamError, match="cannot load junk.onnx"):
        OnnxRuntimeRunner(tmp_path / "junk.onnx")
    with pytest.raises(ReparamError, match="suffix"):
        runner_for(tmp_path / "model.bin")
    with pytest.raises(ReparamError, match="type int"):
        runner_for(3)
    with pytest.raises(ReparamError, match=".pt2"):
        TorchRunner(str(onnx_file))


def test_runner_for_picks_by_type(onnx_file):
    assert isinstance(runner_for(onnx_file, threads=1), OnnxRuntimeRunner)
    assert isinstance(runner_for(tiny_net()), TorchRunner)
    runner = TorchRunner(tiny_net())
    assert runner_for(runner) is runner and isinstance(runner, Runner)


def test_tensorrt_runner_without_tensorrt(tmp_path, monkeypatch):
    import sys

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ReparamError, match="TensorRT is not installed") as err:
        TensorRTRunner(engine)
    assert "reparam[trt]" in err.value.hint
    with pytest.raises(ReparamError, match="TensorRT is not installed"):
        runner_for(engine)


def test_a_pt2_refusing_a_size_names_the_nearest_one_it_takes(tmp_path):
    """Converted at 224x224, ACB-ResNet-18 is captured with free height and width, but torch.export
    keeps a guard against a 1x1 last feature map: 32x32 is refused, 33x33 is the nearest it takes."""
    from reparam.artifact import save_artifact
    from reparam.engine import convert
    from reparam.zoo import create_model

    model = create_model("acb_resnet18", width=0.125, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    save_artifact(convert(model, (x,), check=False), (x,), tmp_path / "m.pt2")
    runner = TorchRunner(tmp_path / "m.pt2")
    with pytest.raises(ReparamError, match="nearest larger size it takes is 1x3x33x33"):
        runner.run({"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert runner.run({"input": np.zeros((1, 3, 33, 33), np.float32)})["output"].shape == (1, 10)


def test_a_pt2_candidate_is_named_by_its_file_in_a_refusal(tmp_path):
    from reparam.artifact import save_artifact
    from reparam.engine import convert
    from reparam.verify.core import make_candidate
    from reparam.zoo import create_model

    model = create_model("acb_resnet18", width=0.125, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    save_artifact(convert(model, (x,), check=False), (x,), tmp_path / "m.pt2")
    cand = make_candidate(tmp_path / "m.pt2")
    with pytest.raises(ReparamError, match=r"m\.pt2\) does not take inputs of shape 1x3x32x32"):
        cand.runner.run({"input": np.zeros((1, 3, 32, 32), np.float32)})

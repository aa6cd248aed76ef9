"""reparam.quantize: the Q/DQ layout TensorRT expects, metadata, calibration methods, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from reparam.errors import ReparamError
from reparam.quantize import check_qdq_layout, quantize, weighted_layers
from reparam.quantize.calib import load_calibration, onnx_input_specs
from reparam.quantize.sensitivity import first_metrics, run_onnx

from ._models import batches, export_deploy, synthetic_data, tiny_repvgg


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    x, _ = synthetic_data(96, 1)
    export_deploy(tiny_repvgg(wide=False), root / "model.onnx", x[:2])
    np.savez(root / "calib.npz", input=x)
    return root


def test_qdq_model_is_symmetric_per_channel_checked_and_keeps_provenance(deploy):
    out = deploy / "model.int8.onnx"
    result = quantize(deploy / "model.onnx", out, deploy / "calib.npz")
    source = onnx.load(str(deploy / "model.onnx"))
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    layout = check_qdq_layout(model)  # raises unless every zero point is int8 0 and weights are per-channel
    weighted = weighted_layers(source)
    assert layout.per_channel_weights == len(weighted) == len(result.layers) == 8
    assert layout.per_tensor_activations == layout.quantize >= 8 and result.excluded == []
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    assert all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zero_points)
    meta = {p.key: p.value for p in model.metadata_props}
    for p in source.metadata_props:  # provenance and block boundaries survive
        if p.key != "reparam.precision":
            assert meta[p.key] == p.value, p.key
    assert meta["reparam.precision"] == "int8"
    assert json.loads(meta["reparam.quantization"])["calibration_samples"] == 96
    x, _ = synthetic_data(64, 2)
    m = first_metrics(run_onnx(source, batches(x)), run_onnx(model, batches(x)))
    assert 0.98 < m.cosine < 1.0 - 1e-6  # quantized, and still close


def test_methods_give_different_activation_ranges(deploy):
    def scales(method: str) -> np.ndarray:
        out = deploy / f"{method}.onnx"
        quantize(deploy / "model.onnx", out, deploy / "calib.npz", method=method, percentile=99.0)
        model = onnx.load(str(out))
        acts = [
            onnx.numpy_helper.to_array(i)
            for i in model.graph.initializer
            if i.name.endswith("_scale") and not i.dims
        ]
        return np.array([float(a) for a in acts])

    minmax, pct = scales("minmax"), scales("percentile")
    assert minmax.shape == pct.shape and np.all(pct <= minmax + 1e-12) and np.any(pct < 0.9 * minmax)


def test_entropy_calibration_narrows_ranges(tmp_path):
    import torch
    from torch import nn

    from reparam.exporters.onnx import export_onnx

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    export_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", dynamo=False, simplify=False)
    calib = [{"input": np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)}]
    for method in ("minmax", "entropy"):
        quantize(tmp_path / "m.onnx", tmp_path / f"{method}.onnx", calib, method=method)
    get = {
        m: {
            i.name: onnx.numpy_helper.to_array(i)
            for i in onnx.load(str(tmp_path / f"{m}.onnx")).graph.initializer
        }
        for m in ("minmax", "entropy")
    }
    assert get["entropy"]["input_scale"] < get["minmax"]["input_scale"]  # Gaussian tails clipped


def test_exclusion_by_module_path_keeps_the_layer_float(deploy):
    out = deploy / "excl.onnx"
    result = quantize(deploy / "model.onnx", out, deploy / "calib.npz", exclude=["stage3.0.rbr_dense"])
    assert result.excluded == ["/rbr_dense_4/Conv"] and len(result.layers) == 7
    model = onnx.load(str(out))
    conv = next(n for n in model.graph.node if n.name == "/rbr_dense_4/Conv")
    assert list(conv.input[:2]) == [
        "reparam_boundary_2",
        "stage3.0.rbr_dense.weight",
    ]  # float in, float weight
    with pytest.raises(ReparamError, match="no quantizable layer named 'stage9'"):
        quantize(deploy / "model.onnx", deploy / "x.onnx", deploy / "calib.npz", exclude=["stage9"])
    assert not (deploy / "x.onnx").exists()


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"a": np.zeros((4, 3, 16, 16), np.float32), "b": np.zeros((4, 3, 16, 16), np.float32)},
            "model's inputs are",
        ),
        ({"input": np.zeros((4, 4, 16, 16), np.float32)}, "does not fit the input"),
        ({"input": np.zeros((4, 3, 16), np.float32)}, "does not fit the input"),
        ({"input": np.zeros((4, 3, 16, 16), np.uint8)}, "dtype uint8"),
        ({"input": np.zeros((0, 3, 16, 16), np.float32)}, "no samples"),
    ],
)
def test_bad_calibration_data_is_one_error_and_writes_nothing(deploy, tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out.onnx"
    with pytest.raises(ReparamError, match=match) as err:
        quantize(deploy / "model.onnx", out, tmp_path / "bad.npz")
    assert err.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_bad_models_and_sets(deploy, tmp_path):
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ReparamError, match="is not an ONNX model"):
        quantize(tmp_path / "text.onnx", tmp_path / "o.onnx", deploy / "calib.npz")
    quantize(deploy / "model.onnx", tmp_path / "q.onnx", deploy / "calib.npz")
    with pytest.raises(ReparamError, match="already quantized"):
        quantize(tmp_path / "q.onnx", tmp_path / "o.onnx", deploy / "calib.npz")
    with pytest.raises(ReparamError, match="calibration set is empty"):
        quantize(deploy / "model.onnx", tmp_path / "o.onnx", [])
    with pytest.raises(ReparamError, match="does not exist"):
        quantize(deploy / "model.onnx", tmp_path / "o.onnx", tmp_path / "missing.npz")
    with pytest.raises(ReparamError, match="overwrite its input"):
        quantize(deploy / "model.onnx", deploy / "model.onnx", deploy / "calib.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "text.onnx"]


def test_in_memory_batches_and_named_arrays(deploy):
    specs = onnx_input_specs(onnx.load(str(deploy / "model.onnx")))
    x, _ = synthetic_data(10, 3)
    got = load_calibration([{"input": x[:6].astype(np.float64)}, {"input": x[6:]}], specs, batch_size=4)
    assert [b["input"].shape[0] for b in got] == [4, 4, 2] and got[0]["input"].dtype == np.float32
    assert np.array_equal(np.concatenate([b["input"] for b in got]), x)

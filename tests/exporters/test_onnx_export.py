"""ONNX export: numerics vs PyTorch through the dynamic batch, names, metadata, checker, both exporters."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch

from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm, scale_relative_error
from tests.exporters._models import TwoOutputs, tiny_net

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from reparam.exporters.onnx import BATCH_DIM, export_onnx, onnx_summary  # noqa: E402


def _run(path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


def _batch_dim(path) -> str:
    model = onnx.load(str(path))
    return model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


@pytest.fixture(scope="module")
def deploy_onnx(tmp_path_factory):
    train = tiny_net()
    example = torch.randn(1, 3, 16, 16)
    converted = convert(train, (example,))
    path = tmp_path_factory.mktemp("onnx") / "deploy.onnx"
    result = export_onnx(converted, (example,), path, dynamo=False, metadata={"source_sha256": "ab" * 32})
    return train, converted.model, path, result


@pytest.mark.parametrize("batch", [1, 3])
def test_deploy_onnx_matches_torch_through_dynamic_batch(deploy_onnx, batch):
    train, _, path, _ = deploy_onnx
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
    ref = train(x).detach().numpy()
    (out,) = _run(path, x.numpy())
    assert out.shape == (batch, 5)
    assert 1e-3 < np.abs(ref).max() < 1e4  # a meaningful comparison, not near-zero outputs
    assert scale_relative_error(ref, out) <= 1e-5


def test_deploy_onnx_structure(deploy_onnx):
    _, _, path, result = deploy_onnx
    # Fused: one conv per layer, no BN, only the residual-free head path keeps no Add from branches.
    assert result.op_counts.get("Conv") == 2
    assert "BatchNormalization" not in result.op_counts
    assert result.op_counts.get("Add", 0) == 0  # the identity + three branches became one conv
    assert result.simplified and _batch_dim(path) == BATCH_DIM
    assert result.input_names == ["input"] and result.output_names == ["output"]


def test_metadata_and_checker(deploy_onnx):
    _, _, path, result = deploy_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["reparam.form"] == "deploy"
    assert props["reparam.source_sha256"] == "ab" * 32
    assert json.loads(props["reparam.input_shapes"]) == [[1, 3, 16, 16]]
    assert props["reparam.precision"] == "fp32"
    assert "fold_bn" in json.loads(props["reparam.passes"])
    assert not any(k.startswith("onnxsim.") for k in props)
    summary = onnx_summary(path)
    assert summary["inputs"] == [{"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert summary["metadata"]["reparam.form"] == "deploy"


def test_block_boundaries_are_named_tensors(deploy_onnx):
    """The boundary tensors recorded in the metadata exist and hold the deploy graph's block values."""
    _, _, path, result = deploy_onnx
    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output}
    boundaries = json.loads({p.key: p.value for p in model.metadata_props}["reparam.boundaries"])
    assert boundaries == dict(result.boundaries) and boundaries
    assert set(boundaries.values()) <= produced
    assert [o.name for o in model.graph.output] == ["output"]  # the extra outputs were removed again
    from reparam.equivalence import onnx_block_outputs

    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    values = {p: v for p, (v,) in onnx_block_outputs(path, {"input": x}).items()}
    assert set(values) == set(boundaries)
    # The "stem" boundary tensor holds what the training model's stem block computes.
    train = deploy_onnx[0]
    ref = train.stem(torch.from_numpy(x)).detach().numpy()
    assert scale_relative_error(ref, values["stem"]) <= 1e-5


def test_dynamo_exporter_matches_and_keeps_dynamic_batch(tmp_path):
    model = tiny_net(1)
    example = torch.randn(1, 3, 16, 16)
    result = export_onnx(model, (example,), tmp_path / "m.onnx", dynamo=True, opset=18)
    assert result.exporter == "dynamo" and result.opset == 18 and result.sidecar is None
    assert not (tmp_path / "m.onnx.data").exists()  # one file below 2 GB
    assert _batch_dim(tmp_path / "m.onnx") == BATCH_DIM
    x = torch.randn(4, 3, 16, 16)
    (out,) = _run(tmp_path / "m.onnx", x.numpy())
    assert scale_relative_error(model(x).detach().numpy(), out) <= 1e-5
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["reparam.form"] == "training" and props["reparam.exporter"] == "dynamo"


def test_static_export_and_extra_dynamic_axes(tmp_path):
    model = tiny_net()
    static = export_onnx(
        model, torch.randn(2, 3, 16, 16), tmp_path / "s.onnx", dynamic_batch=False, dynamo=False
    )
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 16, 16] and static.dynamic_axes == {}
    export_onnx(
        model,
        torch.randn(1, 3, 16, 16),
        tmp_path / "d.onnx",
        dynamo=False,
        dynamic_axes={"input": {2: "height", 3: "width"}},
    )
    dims = onnx.load(str(tmp_path / "d.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    (out,) = _run(tmp_path / "d.onnx", np.zeros((2, 3, 24, 20), np.float32))
    assert out.shape == (2, 5)


def test_several_outputs_are_numbered(tmp_path):
    result = export_onnx(TwoOutputs().eval(), torch.randn(1, 3, 8, 8), tmp_path / "t.onnx", dynamo=False)
    assert result.output_names == ["output0", "output1"]
    outs = _run(tmp_path / "t.onnx", np.ones((2, 3, 8, 8), np.float32))
    assert [o.shape for o in outs] == [(2, 4, 8, 8), (2, 4)]


def test_model_mode_is_restored(tmp_path):
    model = tiny_net().train()
    export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=False, simplify=False)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_names": ("a", "b")}, "input name"),
        ({"output_names": ("x", "y")}, "output name"),
        ({"opset": 3}, "opset"),
        ({"dynamic_axes": {"nope": [1]}}, "not an input or output"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(ReparamError, match=match):
        export_onnx(tiny_net(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_a_reparam_error_with_hint(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x.nonzero().float().sum() if x.sum() > 0 else x

    with pytest.raises(ReparamError) as err:
        export_onnx(DataDependent(), torch.ones(1, 3), tmp_path / "m.onnx", dynamo=True)
    assert "legacy" in err.value.hint
    assert not (tmp_path / "m.onnx").exists()


def test_a_value_ending_a_stage_and_its_last_block_maps_both(tmp_path):
    from reparam.equivalence import onnx_block_outputs
    from reparam.zoo import create_model

    torch.manual_seed(0)
    train = randomize_batchnorm(create_model("acb_resnet18", width=0.25, num_classes=5)).eval()
    example = torch.randn(1, 3, 32, 32)
    result = export_onnx(convert(train, (example,)), (example,), tmp_path / "m.onnx", dynamo=False)
    b = result.boundaries
    assert "layer1" in b and "layer1.1" in b and b["layer1"] == b["layer1.1"]
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    values = {p: v for p, (v,) in onnx_block_outputs(tmp_path / "m.onnx", {"input": x}).items()}
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref = train.layer1(train.stem(t))
    for path in ("layer1", "layer1.1"):
        assert scale_relative_error(ref.numpy(), values[path]) <= 1e-5


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnxsim_is_checked_exactly_when_it_changed_the_graph(dynamo, tmp_path, monkeypatch):
    """The legacy exporter leaves work for onnxsim (its result is run against the original on random
    inputs); after the dynamo exporter's optimizer onnxsim changes nothing, and nothing needs a run."""
    import onnxsim

    from reparam.exporters.onnx.export import same_computation

    checked = []
    real = onnxsim.model_checking.compare

    def counting(model_opt, model_ori, n_times=5, *args, **kwargs):
        if n_times:  # onnxsim.simplify itself calls it with 0 runs, to check the graph only
            checked.append(n_times)
        return real(model_opt, model_ori, n_times, *args, **kwargs)

    monkeypatch.setattr(onnxsim.model_checking, "compare", counting)
    example = torch.randn(1, 3, 16, 16)
    result = export_onnx(convert(tiny_net(), (example,)), (example,), tmp_path / "m.onnx", dynamo=dynamo)
    assert result.simplified and bool(checked) == (not dynamo)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert same_computation(model, model)
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    conv = next(n for n in changed.graph.node if n.op_type == "Conv")
    conv.input[0], conv.input[1] = conv.input[1], conv.input[0]
    assert not same_computation(changed, model)


def test_the_dynamo_exporter_keeps_nothing_of_the_model(tmp_path):
    """Once the file is written, no exporter state holds the model's weights: a deploy run
    verifies its artifacts after exporting, and a held copy of the weights adds to its peak."""
    model = tiny_net().eval()
    export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=True)
    weight = weakref.ref(model.stem[0].weight)
    del model
    gc.collect()
    assert weight() is None

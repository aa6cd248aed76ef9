import numpy as np
import pytest
import torch

from reparam.equivalence import (
    Boundaries,
    BoundaryKind,
    block_outputs,
    locate_divergence,
    onnx_block_outputs,
    run_with_block_hooks,
)

from ._models import BLOCKS, tiny_pair


def _batch(seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((2, 3, 16, 16)).astype(np.float32)}


def _x(seed=0):
    return (torch.from_numpy(_batch(seed)["input"]),)


def module_block_outputs(model, paths, batch):
    x = torch.from_numpy(batch["input"])
    run = run_with_block_hooks(model, paths, lambda: model(x))
    return run.values, run.order


def test_reference_hooks_record_execution_order():
    ref, _, _ = tiny_pair()
    values, order = module_block_outputs(ref, list(reversed(BLOCKS)), _batch())
    assert order == BLOCKS
    assert [v.shape for v in values["layer2"]] == [(2, 8, 4, 4)]


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.split = _Split()

    def forward(self, x):
        a, b = self.split(x)
        return a + b


class _Split(torch.nn.Module):
    def forward(self, x):
        return x * 2, x - 1


def test_a_block_with_several_outputs_is_compared_output_by_output():
    model = _TwoOutputs()
    run = run_with_block_hooks(model, ["split"], lambda: model(torch.ones(1, 3)))
    assert [v.tolist() for v in run.values["split"]] == [[[2.0] * 3], [[0.0] * 3]]
    good = run.values
    bad = {"split": (good["split"][0], good["split"][1] + 1)}
    assert locate_divergence(good, good, ["split"]).first_diverging is None
    assert locate_divergence(good, bad, ["split"]).first_diverging == "split"  # the second output differs
    fewer = {"split": good["split"][:1]}
    assert locate_divergence(good, fewer, ["split"]).first_diverging == "split"


def test_perturbed_block_is_the_first_diverging_one():
    ref, gm, boundaries = tiny_pair()
    ref_vals, order = module_block_outputs(ref, BLOCKS, _batch())
    clean = locate_divergence(ref_vals, block_outputs(gm, boundaries, _x()), order)
    assert clean.first_diverging is None
    assert [b.name for b in clean.blocks] == BLOCKS and all(b.scale_rel < 1e-6 for b in clean.blocks)
    with torch.no_grad():
        gm.get_submodule("layer1.1").conv.weight[1, 0, 1, 1] += 0.5
    div = locate_divergence(ref_vals, block_outputs(gm, boundaries, _x()), order)
    assert div.first_diverging == "layer1.1"
    assert [b.passed for b in div.blocks] == [True, True, False, False]


def test_exported_program_nodes_are_found_through_provenance():
    ref, gm, boundaries = tiny_pair()
    with torch.no_grad():
        gm.get_submodule("layer2").conv.weight[0, 0, 0, 0] += 0.5
    ep = torch.export.export(gm, (torch.from_numpy(_batch()["input"]),))
    exported = ep.module()
    resolved = boundaries.in_graph(exported)
    assert set(resolved) == set(BLOCKS) and resolved.kind is BoundaryKind.GRAPH_NODE
    assert dict(resolved) != dict(boundaries)  # the exported graph named its nodes anew
    ref_vals, order = module_block_outputs(ref, BLOCKS, _batch())
    values = block_outputs(exported, boundaries, _x())
    assert values["stem"][0].shape == ref_vals["stem"][0].shape
    assert locate_divergence(ref_vals, values, order).first_diverging == "layer2"


class _WithBlocks(torch.nn.Module):
    """Returns the block outputs as extra outputs, so the ONNX graph names them."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        s = self.net.stem(x)
        a = self.net.layer1[0](s)
        b = self.net.layer1[1](a)
        c = self.net.layer2(b)
        return self.net.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(c, 1), 1)), s, a, b, c


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_boundaries_from_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    ref, _, _ = tiny_pair()
    names = [f"block:{p}" for p in BLOCKS]
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _WithBlocks(ref).eval(),
            (torch.zeros(1, 3, 16, 16),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output", *names],
            dynamic_axes={"input": {0: "n"}},
        )
    model = onnx.load(str(path))
    del model.graph.output[1:]  # ship only the real output; the block tensors stay inside the graph
    Boundaries(BoundaryKind.ONNX_TENSOR, dict(zip(BLOCKS, names))).write_onnx(model)
    weight = next(i for i in model.graph.initializer if i.dims[0] == 8 and len(i.dims) == 4)  # layer2 conv
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr[:, :, 1, 1] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, str(path))

    stored = Boundaries.read_onnx(onnx.load(str(path)))
    assert stored.kind is BoundaryKind.ONNX_TENSOR and dict(stored) == dict(zip(BLOCKS, names))
    values = onnx_block_outputs(path, _batch())
    assert set(values) == set(BLOCKS)
    ref_vals, order = module_block_outputs(ref, BLOCKS, _batch())
    div = locate_divergence(ref_vals, values, order)
    assert div.first_diverging == "layer2"
    assert all(b.passed for b in div.blocks[:3])


def test_a_block_difference_damped_before_the_output_is_reported():
    """One channel of ScaleNet-50's last conv off by 1 % stays below the output limit: the report warns."""
    import copy

    from reparam.engine import convert
    from reparam.numerics import calibrate_batchnorm
    from reparam.verify.core import make_candidate, verify
    from reparam.zoo import create_model

    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model("scalenet50", width=0.25, num_classes=10), 0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = convert(model, x[:1])
    bad = copy.deepcopy(result.model)
    last = [m for m in bad.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight[0].mul_(1.01)
    report = verify(
        model,
        [
            make_candidate(result.model, name="good", record=result.record),
            make_candidate(bad, name="bad", record=result.record),
        ],
        [{"input": x.numpy()}],
    )
    good, damped = report.candidates
    assert good.passed and good.divergence.first_diverging is None and not good.divergence.note
    assert damped.passed  # within the output tolerance...
    assert damped.divergence.first_diverging == "layer4.2.conv3"  # ...but the block is named
    assert "warning" in damped.divergence.note and "layer4.2.conv3" in damped.divergence.note
    assert "layer4.2.conv3" in report.render_text()

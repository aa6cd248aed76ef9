"""Checkpoint loading: containers, prefixes, safetensors, pickle safety, clear errors."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from reparam.checkpoint import build_model, file_sha256, load_model, save_checkpoint
from reparam.errors import ReparamError
from reparam.limits import build_on_meta
from reparam.zoo import create_model

ARCH, KW = "acb_resnet18", {"num_classes": 5, "width": 0.25}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return create_model(ARCH, **KW)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reparam_checkpoint_records_its_architecture(tmp_path, trained):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(trained, path, ARCH, KW)
    model = load_model(path)
    assert _same(model, trained) and not model.training
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ema", "model_ema", "net", "nested"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_containers_and_wrapper_prefixes_are_unwrapped(tmp_path, trained, wrap, prefix):
    sd = {prefix + k: v for k, v in trained.state_dict().items()}
    obj = {"plain": sd, "nested": {"model": {"state_dict": sd}, "epoch": 3}}.get(wrap, {wrap: sd, "epoch": 3})
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    assert _same(load_model(path, ARCH, KW), trained)


def test_safetensors_with_and_without_metadata(tmp_path, trained):
    sd = {k: v.contiguous() for k, v in trained.state_dict().items()}
    with_meta = tmp_path / "a.safetensors"
    save_file(sd, str(with_meta), metadata={"arch": ARCH, "arch_kwargs": '{"num_classes": 5, "width": 0.25}'})
    assert _same(load_model(with_meta), trained)
    bare = tmp_path / "b.safetensors"
    save_file(sd, str(bare))
    assert _same(load_model(bare, ARCH, KW), trained)
    with pytest.raises(ReparamError, match="does not record its architecture"):
        load_model(bare)


def test_pickled_module_needs_trust_pickle(tmp_path, trained):
    path = tmp_path / "whole.pt"
    torch.save(trained, path)
    with pytest.raises(ReparamError) as info:
        load_model(path)
    assert "pickled code" in info.value.message and "`trust_pickle`" in info.value.hint
    assert _same(load_model(path, trust_pickle=True), trained)


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_default_loading_never_executes_code_from_the_file(tmp_path, trained):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": trained.state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(ReparamError, match="pickled code"):
        load_model(path, ARCH, KW)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "legacy_truncate", "empty"])
def test_truncated_or_corrupt_files_give_a_clear_error(tmp_path, trained, damage):
    path = tmp_path / "bad.pth"
    if damage == "legacy_truncate":
        torch.save(trained.state_dict(), path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "truncate":
        save_checkpoint(trained, path, ARCH, KW)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif damage == "text":  # the unpickler reports an unsupported opcode: not a checkpoint, not pickled code
        path.write_bytes(b"vm-host\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(ReparamError, match="truncated, corrupt"):
        load_model(path, ARCH, KW)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ReparamError, match="truncated, corrupt"):
        load_model(path, ARCH, KW)


def test_missing_file(tmp_path):
    with pytest.raises(ReparamError, match="does not exist"):
        load_model(tmp_path / "nope.pth")


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path, trained):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(trained, path, ARCH, KW)
    with pytest.raises(ReparamError) as info:
        load_model(path, "resnet18", KW)
    msg = info.value.message
    assert (
        "missing keys" in msg
        and "unexpected keys" in msg
        and "in all)" in msg
        and "`arch`" in info.value.hint
    )
    assert msg.count(",") < 40  # first few keys only, with counts


def test_missing_keys_and_shape_mismatches(tmp_path, trained):
    sd = trained.state_dict()
    dropped = dict(list(sd.items())[3:])
    path = tmp_path / "partial.pth"
    torch.save({"arch": ARCH, "arch_kwargs": KW, "state_dict": dropped}, path)
    with pytest.raises(ReparamError, match=r"missing keys: .*\(3 in all\)"):
        load_model(path)
    with pytest.raises(ReparamError, match="shape mismatches"):
        load_model(tmp_path / "partial.pth", ARCH, {"num_classes": 6, "width": 0.25})


def test_build_model_by_factory_path():
    model = build_model("reparam.zoo:create_model", {"name": "resnet18", "num_classes": 3, "width": 0.25})
    assert model.fc.out_features == 3
    with pytest.raises(ReparamError, match="cannot import"):
        build_model("no_such_package.mod:factory")
    with pytest.raises(ReparamError, match="no attribute"):
        build_model("reparam.zoo:no_such_factory")
    with pytest.raises(ReparamError, match="not a torch.nn.Module"):
        build_model("reparam.zoo:list_models")
    with pytest.raises(ReparamError, match="unknown model"):
        build_model("resnet19")


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_a_file_never_chooses_code_to_import(tmp_path, trained, container):
    marker = tmp_path / "ran"
    kwargs = {"args": ["touch", str(marker)]}
    path = tmp_path / f"evil.{container}"
    if container == "pth":
        torch.save({"arch": "subprocess:check_call", "arch_kwargs": kwargs, "state_dict": {}}, path)
    else:
        sd = {k: v.contiguous() for k, v in trained.state_dict().items()}
        save_file(
            sd, str(path), metadata={"arch": "subprocess:check_call", "arch_kwargs": json.dumps(kwargs)}
        )
    with pytest.raises(ReparamError, match="names code to import") as info:
        load_model(path)
    assert "`arch`" in info.value.hint
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"num_classes": 5, "width": 1e300}, "out of range"),
        ({"num_classes": 10**12}, "out of range"),
        ({"num_classes": [[[[[[5]]]]]]}, "nested too deeply"),
        ({"num_classes": 5, "note": "x" * 100_000}, "too long"),
        ({"num_classes": 5, "many": list(range(5000))}, "too many values"),
        (["num_classes", 5], "not a mapping"),
    ],
)
def test_kwargs_recorded_in_a_file_are_validated_before_building(tmp_path, trained, kwargs, why):
    path = tmp_path / "ckpt.pth"
    torch.save({"arch": ARCH, "arch_kwargs": kwargs, "state_dict": trained.state_dict()}, path)
    with pytest.raises(ReparamError, match=why):
        load_model(path)


def test_a_model_over_the_memory_limit_is_refused_before_it_is_built(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("REPARAM_MAX_MEMORY", "2G")
    path = tmp_path / "ckpt.pth"
    torch.save({"arch": ARCH, "arch_kwargs": {"width": 2000}, "state_dict": trained.state_dict()}, path)
    with pytest.raises(ReparamError, match=r"the parameters of acb_resnet18 .* more than the memory limit"):
        load_model(path)
    with pytest.raises(ReparamError, match="more than the memory limit of 0.5 GiB"):
        build_model(ARCH, {"width": 300}, max_bytes="512M")


def test_an_architecture_given_by_the_caller_overrides_what_the_file_records(tmp_path, trained):
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"arch": "some.module:Factory", "arch_kwargs": {"x": 1}, "state_dict": trained.state_dict()}, path
    )
    assert _same(load_model(path, ARCH, KW), trained)


def test_save_checkpoint_takes_the_model_first_like_torch_save(tmp_path, trained):
    with pytest.raises(TypeError, match="takes the model first"):
        save_checkpoint(tmp_path / "x.pth", trained, ARCH, KW)
    assert not (tmp_path / "x.pth").exists()


class DerivedBuffer(nn.Module):
    """A non-persistent buffer computed in ``__init__``: the checkpoint does not carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("scale", torch.arange(4.0).view(1, 4, 1, 1) + 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


class Tied(nn.Module):
    """Two layers sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_the_checkpoints_tensors_become_the_models_own(trained):
    """No random initialization and no copy: the model holds the checkpoint's tensors."""
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    model = build_model(ARCH, KW, state_dict=state).eval()
    assert model.fc.weight.data_ptr() == state["fc.weight"].data_ptr()
    assert isinstance(model.fc.weight, nn.Parameter) and model.fc.weight.requires_grad
    x = torch.randn(2, 3, 32, 32)
    assert _same(model, trained) and torch.equal(model(x), trained.eval()(x))


@pytest.mark.parametrize("case", ["derived buffer", "tied weights", "other dtype"])
def test_models_the_checkpoint_cannot_simply_fill_are_built_and_copied_into(case):
    torch.manual_seed(0)
    arch = {
        "derived buffer": "tests.test_checkpoint:DerivedBuffer",
        "tied weights": "tests.test_checkpoint:Tied",
    }
    source = (
        DerivedBuffer() if case == "derived buffer" else Tied() if case == "tied weights" else trained_half()
    )
    state = source.state_dict()
    model = build_model(arch.get(case, ARCH), None if case in arch else KW, state_dict=state)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    if case == "derived buffer":
        assert torch.equal(model.scale.flatten(), torch.arange(4.0) + 1)
        x = torch.randn(1, 3, 8, 8)
        assert torch.equal(model(x), source(x))
    elif case == "tied weights":
        assert model.b.weight is model.a.weight and torch.equal(model.a.weight, source.a.weight)
    else:
        assert model.fc.weight.dtype == torch.float32
        assert torch.equal(model.fc.weight, state["fc.weight"].float())


def trained_half() -> nn.Module:
    return create_model(ARCH, **KW).half()


class _DispatchedOps(TorchDispatchMode):
    """The ATen operators that run beneath it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class _EveryInit(nn.Module):
    """Parameters initialized by every kind of call a model's constructor makes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # kaiming_uniform_ in reset_parameters
        self.fc = nn.Linear(8, 4)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        self.fc.bias.data.normal_()
        self.real = torch.empty(5, device="cpu").normal_()  # a tensor with values keeps them


def test_a_model_measured_on_meta_is_built_without_filling_its_weights():
    """Meta tensors hold no values: the weight initialization is skipped (torch computes normal_ on
    meta through Python decompositions, seconds per process), anything else still runs."""
    seen = _DispatchedOps()

    def factory() -> nn.Module:
        with seen:
            return _EveryInit()

    model = build_on_meta(factory)
    assert model is not None and all(p.is_meta for p in model.parameters())
    assert [p.shape for p in model.parameters()] == [p.shape for p in _EveryInit().parameters()]
    fills = [n for n in seen.names if any(f in n for f in ("normal", "uniform", "erfinv"))]
    assert fills == ["aten.normal_.default"]  # the cpu tensor's alone
    assert not model.real.is_meta and torch.isfinite(model.real).all()
    built = create_model("acb_resnet18", num_classes=3, width=0.25)  # off meta, initialized as always
    assert built.fc.weight.std() > 0

"""Load training checkpoints safely and build their architecture.

Default loading never executes code from the file: ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)`` and ``.safetensors`` files hold tensors only. A file that holds a
pickled ``nn.Module`` (or any other pickled object) is loaded only with ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from reparam.errors import ReparamError
from reparam.io import atomic_path, file_sha256  # noqa: F401  (file_sha256 is part of this module's API)
from reparam.limits import build_on_meta, memory_limit, refuse_over_limit, state_bytes
from reparam.zoo import create_model

CONTAINER_KEYS = ("state_dict", "model", "ema", "model_ema", "net", "state_dict_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
METADATA_KEY = "reparam"  # a state dict's record of its architecture (see record_architecture)
_SHOW = 5
_MAX_KWARG_ITEMS, _MAX_KWARG_DEPTH, _MAX_KWARG_STRING, _MAX_KWARG_NUMBER = 1000, 4, 4096, 10**6


def _import_factory(arch: str, param: str) -> Any:
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReparamError(
            f"cannot import {module_name!r} for `{param}` {arch!r}: {exc}",
            hint="run from the directory that holds it, make the package importable (PYTHONPATH), "
            "or use a zoo model name",
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ReparamError(
                f"{module_name!r} has no attribute {attr!r}",
                hint=f"write `{param}` as 'package.module:factory'",
            )
    return factory


def _call_factory(arch: str, factory: Any, kwargs: dict[str, Any], param: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ReparamError(
            f"calling {arch} with {kwargs} failed: {exc}",
            hint=f"check `{param}_kwargs` against the factory's signature",
        ) from exc
    if not isinstance(model, nn.Module):
        raise ReparamError(
            f"{arch} returned {type(model).__name__}, not a torch.nn.Module",
            hint=f"point `{param}` at a function or class that builds the model",
        )
    return model


def build_model(
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    *,
    max_bytes: int | str | None = None,
    param: str = "arch",
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Build an architecture by zoo name or ``package.module:factory`` with keyword arguments.

    The parameters are counted on the ``meta`` device first: a model over the memory limit
    (:func:`reparam.limits.memory_limit`) is refused before anything is allocated. ``param`` is
    the parameter that named ``arch`` (``arch``, ``as_arch``), for errors. ``state_dict`` is loaded
    strictly (:func:`load_state_dict_strict`); where that is the same model, the one built on
    ``meta`` takes its tensors as they are, and no random initialization or copy is made.
    """
    kwargs = dict(arch_kwargs or {})
    if ":" in arch:
        factory = _import_factory(arch, param)

        def make() -> nn.Module:
            return _call_factory(arch, factory, kwargs, param)
    else:

        def make() -> nn.Module:
            return create_model(arch, **kwargs)

    meta = build_on_meta(make)
    if meta is not None:
        refuse_over_limit(f"the parameters of {arch} {kwargs}", state_bytes(meta), memory_limit(max_bytes))
        if state_dict is not None and _takes_tensors_as_they_are(meta, state_dict):
            load_state_dict_strict(meta, state_dict, arch, assign=True)
            if not _holds_meta_tensors(meta):
                return meta
    model = make()
    if state_dict is not None:
        load_state_dict_strict(model, state_dict, arch)
    return model


def _takes_tensors_as_they_are(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether assigning the checkpoint's tensors gives what copying them would: no tied entries
    in the model, and each tensor on the CPU, of the model's dtype, in a storage of its own."""
    expected = model.state_dict(keep_vars=True)
    if len({id(v) for v in expected.values()}) != len(expected):
        return False
    storages = set()
    for key, wanted in expected.items():
        tensor = state_dict.get(key)
        if tensor is None:
            continue  # load_state_dict_strict names what is missing
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.dtype != wanted.dtype
            or tensor.device.type != "cpu"
        ):
            return False
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:
            return False
        storages.add(storage)
    return True


def _holds_meta_tensors(model: nn.Module) -> bool:
    """A tensor the checkpoint did not replace (a non-persistent buffer, a plain attribute)."""
    for module in model.modules():
        for value in vars(module).values():
            items = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, list | tuple)
                else [value]
            )
            if any(isinstance(v, torch.Tensor) and v.is_meta for v in items):
                return True
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def validate_file_kwargs(kwargs: Any, source: str) -> dict[str, Any]:
    """Architecture kwargs read from a file: JSON-like values of bounded size only."""
    budget = [_MAX_KWARG_ITEMS]

    def check(value: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_KWARG_DEPTH:
            raise _bad_kwargs(source, "nested too deeply or too many values")
        if value is None or isinstance(value, bool | int):
            if isinstance(value, int) and abs(value) > _MAX_KWARG_NUMBER:
                raise _bad_kwargs(source, f"the number {value} is out of range")
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > _MAX_KWARG_NUMBER:
                raise _bad_kwargs(source, f"the number {value} is out of range")
        elif isinstance(value, str):
            if len(value) > _MAX_KWARG_STRING:
                raise _bad_kwargs(source, "a string is too long")
        elif isinstance(value, list | tuple):
            for v in value:
                check(v, depth + 1)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _bad_kwargs(source, f"key {k!r} is not a string")
                check(v, depth + 1)
        else:
            raise _bad_kwargs(source, f"a value of type {type(value).__name__} is not plain data")

    if not isinstance(kwargs, Mapping):
        raise _bad_kwargs(source, f"it is a {type(kwargs).__name__}, not a mapping")
    check(kwargs, 0)
    return dict(kwargs)


def _bad_kwargs(source: str, why: str) -> ReparamError:
    return ReparamError(
        f"the architecture keyword arguments recorded in {source} are refused: {why}",
        hint="pass `arch` and `arch_kwargs` yourself to ignore what the file records",
    )


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, arch: str, arch_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Write ``{"arch", "arch_kwargs", "state_dict"}`` with ``torch.save``, atomically.

    The order follows ``torch.save(obj, f)``: the model first, then where it goes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"save_checkpoint(model, path, arch, arch_kwargs) takes the model first, got {type(model).__name__}"
        )
    payload = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "state_dict": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _torch_detail(exc: BaseException) -> str:
    """torch's reason in a few words, without its advice (torch suggests ``weights_only=False``)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = text.strip().splitlines()[0].strip() if text.strip() else "no detail"
    if "weights_only" in first:
        first = "not a weights-only pickle"
    first = first.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:160]}"


def _corrupt(path: Path, exc: BaseException) -> ReparamError:
    return ReparamError(
        f"cannot read checkpoint {str(path)!r}: the file is truncated, corrupt or not a PyTorch checkpoint "
        f"({_torch_detail(exc)})",
        hint="copy or download the file again and compare its size / checksum with the original",
    )


_TRUST_HINT = "re-run with `trust_pickle` if you trust the file, or save a state_dict instead"


def _read(path: Path, trust_pickle: bool, pickled_hint: str = _TRUST_HINT) -> Any:
    if not path.is_file():
        raise ReparamError(f"checkpoint {str(path)!r} does not exist", hint="check the path")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as exc:
            raise _corrupt(path, exc) from exc
        out: dict[str, Any] = {"state_dict": tensors}
        if "arch" in meta:
            out["arch"] = meta["arch"]
        if "arch_kwargs" in meta:
            with contextlib.suppress(json.JSONDecodeError):
                out["arch_kwargs"] = json.loads(meta["arch_kwargs"])
        return out
    try:
        with warnings.catch_warnings():
            # torch warns about a pickle protocol it did not write before failing on a damaged file.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Only a refused global means pickled code; other unpickler errors ("Unsupported operand",
        # "invalid load key") mean the file is not a checkpoint at all.
        text = str(exc).lower()
        if "weights only" not in text or "unsupported global" not in text:
            raise _corrupt(path, exc) from exc
        if not trust_pickle:
            raise ReparamError(
                f"checkpoint {str(path)!r} holds pickled code (objects beyond tensors and containers, e.g. a "
                "whole nn.Module); loading it would execute code from the file",
                hint=pickled_hint,
            ) from exc
    except Exception as exc:  # torch.load reports damage as RuntimeError, EOFError, KeyError, IndexError...
        raise _corrupt(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ReparamError(
            f"cannot unpickle checkpoint {str(path)!r}: {type(exc).__name__}: {exc}",
            hint="the file may need the training code on the Python path",
        ) from exc


def _tensors_only(d: Mapping) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in d.items() if isinstance(v, torch.Tensor)}


EMA_SUFFIXES = ("_ema", "_ema_state")


def _candidates(obj: Mapping) -> list[str]:
    """Keys of ``obj`` that hold a state dict, in order of preference (non-EMA container keys first)."""
    keys = [k for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping | nn.Module)]
    extra = [
        k
        for k in obj
        if isinstance(k, str)
        and k not in keys
        and k.endswith(EMA_SUFFIXES)
        and isinstance(obj[k], Mapping | nn.Module)
    ]
    return keys + extra


def _no_entry(obj: Any, key: str, done: list[str], part: str) -> ReparamError:
    """``key`` names no entry: list the entries there and suggest those that hold weights."""
    if not isinstance(obj, Mapping):
        return ReparamError(
            f"`state_dict_key` {key!r}: {part!r} is inside a {type(obj).__name__}, not a mapping",
            hint="drop `state_dict_key` to use the state dict found automatically",
        )
    found = _listing([repr(k) for k in obj]) if obj else "nothing"
    options = [".".join([*done, str(k)]) for k in obj if isinstance(obj[k], Mapping | nn.Module)]
    hint = (
        f"pass one that holds weights: {', '.join(f'`state_dict_key` {o}' for o in options)}"
        if options
        else "drop `state_dict_key`: no entry there holds a state dict"
    )
    return ReparamError(
        f"`state_dict_key` {key!r}: the checkpoint has no entry {part!r} (it holds {found})", hint=hint
    )


def _select(obj: Any, key: str | None, notes: list[str]) -> Any:
    """Unwrap containers down to the state dict; ``key`` (dotted) picks one explicitly."""
    if key is not None:
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(obj, Mapping) or part not in obj:
                raise _no_entry(obj, key, parts[:i], part)
            obj = obj[part]
        return obj.state_dict() if isinstance(obj, nn.Module) else obj
    path: list[str] = []
    for _ in range(4):
        if isinstance(obj, nn.Module):
            return obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        options = _candidates(obj)
        if not options:
            break
        if len(options) > 1:
            where = ".".join(path) + "." if path else ""
            listed = ", ".join(where + k for k in options)
            notes.append(
                f"the checkpoint holds {len(options)} state dicts ({listed}); using {where + options[0]!r}"
                f" (choose with `state_dict_key` {where + options[1]})"
            )
        path.append(options[0])
        obj = obj[options[0]]
    return obj


def _strip(key: str, strip_prefix: str | None) -> str:
    if strip_prefix and key.startswith(strip_prefix):
        key = key[len(strip_prefix) :]
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def extract_state_dict(
    obj: Any,
    *,
    key: str | None = None,
    strip_prefix: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: unwraps containers and strips wrapper prefixes.

    ``key`` selects a container entry (dotted, e.g. ``model_ema``); without it the non-EMA entry is
    used and, when several were found, a note saying so is appended to ``notes``. ``strip_prefix``
    is removed from every key that starts with it (e.g. Lightning's ``model.``).
    """
    obj = _select(obj, key, notes if notes is not None else [])
    if not isinstance(obj, Mapping):
        raise ReparamError(
            f"the checkpoint holds a {type(obj).__name__}, not a state dict",
            hint="save model.state_dict() (optionally inside {'state_dict': ...})",
        )
    sd = _tensors_only(obj)
    if not sd:
        raise ReparamError(
            "no tensors found in the checkpoint",
            hint=f"expected a state dict, optionally under one of {', '.join(CONTAINER_KEYS)}",
        )
    if strip_prefix and not any(k.startswith(strip_prefix) for k in sd):
        raise ReparamError(
            f"`strip_prefix` {strip_prefix!r}: no key of the state dict starts with it",
            hint=f"the keys look like {_listing(sorted(sd))}",
        )
    return {_strip(k, strip_prefix): v for k, v in sd.items()}


def _shared_prefix_hint(unexpected: list[str], expected: Mapping[str, Any]) -> str | None:
    """``strip_prefix`` P when removing P from the unexpected keys makes them the expected ones."""
    if not unexpected or "." not in unexpected[0]:
        return None
    prefix = unexpected[0].split(".")[0] + "."
    if all(k.startswith(prefix) and k[len(prefix) :] in expected for k in unexpected):
        return f"the keys carry a {prefix!r} prefix: pass `strip_prefix` {prefix}"
    return None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{shown}{', ...' if len(keys) > _SHOW else ''} ({len(keys)} in all)"


def _with_batch_counters(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """``state_dict`` with the model's own BatchNorm ``num_batches_tracked`` where it has none.

    The counter only drives a cumulative moving average in training (momentum=None); eval mode and
    the fused weights never read it, and torch's own loading accepts checkpoints without it.
    """
    absent = [k for k in expected if k.rsplit(".", 1)[-1] == "num_batches_tracked" and k not in state_dict]
    if not absent:
        return state_dict
    return {**state_dict, **{k: expected[k] for k in absent}}


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str = "", *, assign: bool = False
) -> None:
    """Load strictly; on any missing/unexpected key or shape mismatch raise one ReparamError listing them.

    Only BatchNorm's ``num_batches_tracked`` counters may be missing (see `_with_batch_counters`).
    """
    expected = model.state_dict()
    state_dict = _with_batch_counters(state_dict, expected)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes)}")
        raise ReparamError(
            f"the checkpoint does not match the architecture{f' {arch!r}' if arch else ''}: "
            + "; ".join(parts),
            hint=_shared_prefix_hint(unexpected, expected)
            or "check `arch` and `arch_kwargs` (e.g. width, num_classes, in_chans) against how the model "
            "was trained",
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


def record_architecture(
    state_dict: Mapping[str, torch.Tensor], arch: str, arch_kwargs: Mapping[str, Any] | None
) -> OrderedDict[str, torch.Tensor]:
    """``state_dict`` as a plain state dict that also records how it was built.

    The record sits in the ``_metadata`` torch keeps beside every state dict (per-module versions),
    which ``torch.load(weights_only=True)`` reads back and ``load_state_dict`` ignores, so
    ``Plain().load_state_dict(torch.load(path))`` works while reparam still finds the architecture.
    """
    out = OrderedDict(state_dict)
    metadata = OrderedDict(getattr(state_dict, "_metadata", None) or {})
    root = dict(metadata.get("", {}))
    root[METADATA_KEY] = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {})}
    metadata[""] = root
    out._metadata = metadata  # type: ignore[attr-defined]
    return out


def recorded_architecture(obj: Any) -> tuple[Any, Any]:
    """``(arch, arch_kwargs)`` as a checkpoint records them, unchecked (``(None, None)`` for none).

    Read from ``{"arch", "arch_kwargs", ...}`` or from a state dict's metadata (`record_architecture`).
    """
    if not isinstance(obj, Mapping):
        return None, None
    if "arch" not in obj:
        root = (getattr(obj, "_metadata", None) or {}).get("", {})
        obj = root.get(METADATA_KEY) if isinstance(root, Mapping) else None
        if not isinstance(obj, Mapping):
            return None, None
    return obj.get("arch"), obj.get("arch_kwargs")


def _recorded_architecture(obj: Any, path: Path) -> tuple[str | None, Any]:
    """The zoo name and kwargs a checkpoint records; a file never chooses code to import."""
    arch, kwargs = recorded_architecture(obj)
    if arch is not None and not isinstance(arch, str):
        raise ReparamError(
            f"checkpoint {str(path)!r} records an architecture of type {type(arch).__name__}",
            hint="pass `arch` (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    if arch and ":" in arch:
        raise ReparamError(
            f"checkpoint {str(path)!r} names code to import as its architecture ({arch[:80]!r}); "
            "reparam builds only zoo models from what a file records",
            hint=f"if you trust that code, pass it yourself: `arch` '{arch[:80]}'",
        )
    return arch or None, kwargs


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    *,
    trust_pickle: bool = False,
    max_bytes: int | str | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    described_by: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the training-form model and load a checkpoint's weights into it (eval mode).

    The architecture and its kwargs come from the arguments, or else from the checkpoint's
    ``arch``/``arch_kwargs`` entries; from a file only a zoo name is accepted, with plain-data
    kwargs of bounded size. A checkpoint that is a pickled module (``trust_pickle=True`` only) is
    used as is unless ``arch`` is given. Models over the memory limit are refused before they are built.

    ``described_by`` (``{"arch", "arch_kwargs", "source"}``, e.g. a deploy artifact's record) is the
    last resort for a checkpoint that records no architecture; it gets the same checks as a file's.
    ``state_dict_key`` / ``strip_prefix``: see `extract_state_dict`. The model carries
    ``reparam_source``: the architecture used and notes on the state dict chosen.
    """
    path = Path(path)
    obj = _read(path, trust_pickle)
    if isinstance(obj, nn.Module) and arch is None:
        return obj.eval()
    if arch is None:  # what the file records is read only when the caller did not choose
        arch, recorded_kwargs = _recorded_architecture(obj, path)
        source = path
        if arch is None and described_by is not None:
            source = Path(str(described_by.get("source", path)))
            arch, recorded_kwargs = _recorded_architecture(described_by, source)
        if arch_kwargs is None and recorded_kwargs is not None:
            arch_kwargs = validate_file_kwargs(recorded_kwargs, repr(str(source)))
    if not arch:
        raise ReparamError(
            f"checkpoint {str(path)!r} does not record its architecture",
            hint="pass `arch` (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    notes: list[str] = []
    state_dict = extract_state_dict(obj, key=state_dict_key, strip_prefix=strip_prefix, notes=notes)
    model = build_model(arch, arch_kwargs, max_bytes=max_bytes, state_dict=state_dict)
    model.reparam_source = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "notes": notes}
    return model.eval()


def checkpoint_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, read without running code from it (for `reparam inspect`).

    Its entries, the architecture it records, and the tensors of the state dict `load_model` would
    use. A file holding pickled code is refused, as `load_model` refuses it without ``trust_pickle``.
    """
    p = Path(path)
    hint = (
        "inspect never runs code from a file: save a state_dict to inspect it; convert, verify and "
        "deploy load a file you trust with `trust_pickle`"
    )
    obj = _read(p, trust_pickle=False, pickled_hint=hint)
    arch, kwargs = recorded_architecture(obj)
    notes: list[str] = []
    sd = extract_state_dict(obj, notes=notes)
    dtypes: dict[str, int] = {}
    for t in sd.values():
        name = str(t.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + 1
    bare = not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values())
    entries = {} if bare else {str(k): _entry_kind(v) for k, v in obj.items()}
    return {
        "path": str(p),
        "kind": "checkpoint",
        "bytes": p.stat().st_size,
        "arch": arch if isinstance(arch, str) else None,
        "arch_kwargs": kwargs if isinstance(kwargs, Mapping) else None,
        "entries": entries,
        "tensors": len(sd),
        "elements": sum(t.numel() for t in sd.values()),
        "dtypes": dtypes,
        "batch_counters": sum(k.endswith("num_batches_tracked") for k in sd),
        "first_tensors": {k: list(t.shape) for k, t in list(sd.items())[: _SHOW * 2]},
        "notes": notes,
    }


def _entry_kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, Mapping):
        tensors = sum(isinstance(v, torch.Tensor) for v in value.values())
        return f"mapping of {len(value)} ({tensors} tensors)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"

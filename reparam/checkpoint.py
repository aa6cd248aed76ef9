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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.errors import ReparamError
from reparam.io import atomic_path, file_sha256  # noqa: F401  (file_sha256 is part of this module's API)
from reparam.limits import memory_limit, parameter_bytes_of, refuse_over_limit

CONTAINER_KEYS = ("state_dict", "model", "ema", "model_ema", "net", "state_dict_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5
_MAX_KWARG_ITEMS, _MAX_KWARG_DEPTH, _MAX_KWARG_STRING, _MAX_KWARG_NUMBER = 1000, 4, 4096, 10**6


def _import_factory(arch: str) -> Any:
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReparamError(
            f"cannot import {module_name!r} for --arch {arch!r}: {exc}",
            hint="make the package importable (PYTHONPATH) or use a zoo model name",
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ReparamError(
                f"{module_name!r} has no attribute {attr!r}", hint="write --arch as 'package.module:factory'"
            )
    return factory


def _call_factory(arch: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ReparamError(
            f"calling {arch} with {kwargs} failed: {exc}",
            hint="check --arch-kwargs against the factory's signature",
        ) from exc
    if not isinstance(model, nn.Module):
        raise ReparamError(
            f"{arch} returned {type(model).__name__}, not a torch.nn.Module",
            hint="point --arch at a function or class that builds the model",
        )
    return model


def build_model(
    arch: str, arch_kwargs: Mapping[str, Any] | None = None, *, max_bytes: int | str | None = None
) -> nn.Module:
    """Build an architecture by zoo name or ``package.module:factory`` with keyword arguments.

    The parameters are counted on the ``meta`` device first: a model over the memory limit
    (:func:`reparam.limits.memory_limit`) is refused before anything is allocated.
    """
    kwargs = dict(arch_kwargs or {})
    if ":" in arch:
        factory = _import_factory(arch)

        def make() -> nn.Module:
            return _call_factory(arch, factory, kwargs)
    else:
        from reparam.zoo import create_model

        def make() -> nn.Module:
            return create_model(arch, **kwargs)

    needed = parameter_bytes_of(make)
    if needed is not None:
        refuse_over_limit(f"the parameters of {arch} {kwargs}", needed, memory_limit(max_bytes))
    return make()


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
        hint="pass --arch and --arch-kwargs yourself to ignore what the file records",
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


def _corrupt(path: Path, exc: BaseException) -> ReparamError:
    return ReparamError(
        f"cannot read checkpoint {str(path)!r}: the file is truncated, corrupt or not a PyTorch checkpoint "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})",
        hint="copy or download the file again and compare its size / checksum with the original",
    )


def _read(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise ReparamError(f"checkpoint {str(path)!r} does not exist", hint="check the path")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

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
                hint="re-run with --trust-pickle (trust_pickle=True) if you trust the file, or save a "
                "state_dict instead",
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


def _select(obj: Any, key: str | None, notes: list[str]) -> Any:
    """Unwrap containers down to the state dict; ``key`` (dotted) picks one explicitly."""
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                found = ", ".join(repr(k) for k in obj) if isinstance(obj, Mapping) else type(obj).__name__
                raise ReparamError(
                    f"--state-dict-key {key!r}: the checkpoint has no entry {part!r} (it holds {found})",
                    hint="pick one of the entries listed, e.g. --state-dict-key model_ema",
                )
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
                f" (choose with --state-dict-key {where + options[1]})"
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
            f"--strip-prefix {strip_prefix!r}: no key of the state dict starts with it",
            hint=f"the keys look like {_listing(sorted(sd))}",
        )
    return {_strip(k, strip_prefix): v for k, v in sd.items()}


def _shared_prefix_hint(unexpected: list[str], expected: Mapping[str, Any]) -> str | None:
    """``--strip-prefix P`` when removing P from the unexpected keys makes them the expected ones."""
    if not unexpected or "." not in unexpected[0]:
        return None
    prefix = unexpected[0].split(".")[0] + "."
    if all(k.startswith(prefix) and k[len(prefix) :] in expected for k in unexpected):
        return f"the keys carry a {prefix!r} prefix: pass --strip-prefix {prefix}"
    return None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"{shown}{', ...' if len(keys) > _SHOW else ''} ({len(keys)} in all)"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str = "") -> None:
    """Load strictly; on any missing/unexpected key or shape mismatch raise one ReparamError listing them."""
    expected = model.state_dict()
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
            or "check --arch and --arch-kwargs (e.g. width, num_classes, in_chans) against how the model "
            "was trained",
        )
    model.load_state_dict(state_dict, strict=True)


def _recorded_architecture(obj: Any, path: Path) -> tuple[str | None, Any]:
    """The zoo name and kwargs a checkpoint records; a file never chooses code to import."""
    if not isinstance(obj, Mapping):
        return None, None
    arch = obj.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise ReparamError(
            f"checkpoint {str(path)!r} records an architecture of type {type(arch).__name__}",
            hint="pass --arch (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    if arch and ":" in arch:
        raise ReparamError(
            f"checkpoint {str(path)!r} names code to import as its architecture ({arch[:80]!r}); "
            "reparam builds only zoo models from what a file records",
            hint="if you trust that code, pass it yourself: --arch 'package.module:factory'",
        )
    return arch or None, obj.get("arch_kwargs")


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
            hint="pass --arch (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    notes: list[str] = []
    state_dict = extract_state_dict(obj, key=state_dict_key, strip_prefix=strip_prefix, notes=notes)
    model = build_model(arch, arch_kwargs, max_bytes=max_bytes)
    load_state_dict_strict(model, state_dict, arch)
    model.reparam_source = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "notes": notes}
    return model.eval()

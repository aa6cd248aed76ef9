"""What an artifact says about itself: architecture, inputs, dynamic axes, precision.

A ``.pt2`` carries it in its embedded ``reparam.json``, an ONNX file in ``reparam.*`` metadata
properties, a deploy directory in ``manifest.json``. Commands read it so that a user never repeats
what the artifact knows. Nothing read here is executed: an architecture named by a file is only a
zoo name (checked by `reparam.checkpoint.load_model`).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reparam.artifact import refuse_pickled_payloads
from reparam.dynamic_shapes import axis_name
from reparam.errors import ReparamError
from reparam.exporters.onnx import onnx_summary
from reparam.exporters.tensorrt.header import read_engine_sidecar
from reparam.io import check_input_file
from reparam.runners import artifact_kind

PT2_METADATA = "reparam.json"


@dataclass
class Description:
    """The self-description of one artifact; None where the artifact does not say."""

    path: str
    kind: str  # "pt2", "onnx", "tensorrt", "deploy-dir"
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    input_names: list[str] = field(default_factory=lambda: ["input"])
    input_shape: list[int | str] | None = None  # symbolic dims as names, e.g. ["batch", 3, 32, 32]
    precision: str | None = None
    # the example shape the artifact was made with (a .pt2 records it next to its free axes)
    recorded_shape: list[int] | None = None
    # axes held at one size, and why (a .pt2 made by this version records them)
    fixed_axes: list[dict[str, Any]] = field(default_factory=list)
    fixed_reason: str = ""

    def architecture(self) -> dict[str, Any] | None:
        """``{"arch", "arch_kwargs", "source"}`` for `load_model(described_by=...)`, if recorded."""
        if not self.arch:
            return None
        return {"arch": self.arch, "arch_kwargs": self.arch_kwargs, "source": self.path}

    def example_shape(self, batch: int = 1) -> tuple[int, ...] | None:
        """A concrete input shape: symbolic dims become ``batch`` (axis 0) or the recorded size."""
        if not self.input_shape:
            return None
        dims = []
        for i, d in enumerate(self.input_shape):
            if not isinstance(d, str):
                dims.append(int(d))
            elif i == 0:
                dims.append(batch)
            elif self.recorded_shape and i < len(self.recorded_shape):
                dims.append(int(self.recorded_shape[i]))
            else:
                return None
        return tuple(dims)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of ``shape`` is accepted (symbolic dims accept any size)."""
        if not self.input_shape:
            return True
        if len(shape) != len(self.input_shape):
            return False
        return all(isinstance(d, str) or int(d) == s for d, s in zip(self.input_shape, shape))

    def refuse_fixed(self, shape: tuple[int, ...] | None, free: set[int] = frozenset()) -> None:
        """A ReparamError when ``shape`` changes, or ``free`` asks to free, an axis the artifact fixes."""
        for f in self.fixed_axes:
            if f.get("input", 0) != 0:
                continue
            axis, size, name = int(f["axis"]), int(f["size"]), f.get("name", f"axis {f['axis']}")
            changed = shape is not None and axis < len(shape) and shape[axis] != size
            if changed or axis in free:
                asked = f"size {shape[axis]}" if changed else "a dynamic size"
                raise ReparamError(
                    f"{Path(self.path).name} holds the input's {name} (axis {axis}) at {size}, "
                    f"{asked} was asked for: {self.fixed_reason or 'fixed when it was exported'}",
                    hint=f"keep the {name} at {size}, or convert the model again at the size you need "
                    "(reparam convert `input_shape`)",
                )

    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.input_shape or []) or "?"


def _pt2(path: Path) -> Description:
    refuse_pickled_payloads(path)  # also refuses zips that are not torch.export programs
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/extra/" + PT2_METADATA)), None)
            embedded = json.loads(z.read(name)) if name else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ReparamError(
            f"cannot read deploy artifact {str(path)!r}: {type(exc).__name__}: {exc}",
            hint="the file must be a .pt2 written by `reparam convert`; it may be truncated",
        ) from exc
    meta = embedded.get("metadata") or {}
    recorded = meta.get("input_shape")
    fixed = [f for f in embedded.get("fixed_axes") or [] if isinstance(f, dict)]
    shape = _symbolic_shape(recorded, fixed, embedded)
    kwargs = meta.get("arch_kwargs")
    if isinstance(kwargs, str):  # written as the --arch-kwargs text by older versions
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError:
            kwargs = None
    return Description(
        str(path),
        "pt2",
        arch=meta.get("arch") if isinstance(meta.get("arch"), str) else None,
        arch_kwargs=kwargs if isinstance(kwargs, dict) else None,
        input_names=list(meta.get("input_names") or ["input"]),
        input_shape=shape,
        precision=meta.get("precision", "fp32"),
        recorded_shape=list(recorded) if recorded else None,
        fixed_axes=fixed,
        fixed_reason=str(embedded.get("fixed_axes_reason") or ""),
    )


def _symbolic_shape(
    recorded: list[int] | None, fixed: list[dict[str, Any]], embedded: dict[str, Any]
) -> list[int | str] | None:
    """The recorded input shape with every free axis named (``batch``, ``height``, ...)."""

    if not recorded:
        return None
    if "fixed_axes" not in embedded:  # written before spatial axes were recorded: the batch alone
        return ["batch", *recorded[1:]] if embedded.get("dynamic_batch") else list(recorded)
    held = {int(f["axis"]) for f in fixed if f.get("input", 0) == 0}
    free = [0, *range(2, len(recorded))]
    return [axis_name(len(recorded), i) if i in free and i not in held else d for i, d in enumerate(recorded)]


def _onnx(path: Path) -> Description:
    info = onnx_summary(path)
    meta = info["metadata"]
    inputs = info["inputs"]
    kwargs = meta.get("reparam.arch_kwargs")
    return Description(
        str(path),
        "onnx",
        arch=meta.get("reparam.arch") if isinstance(meta.get("reparam.arch"), str) else None,
        arch_kwargs=kwargs if isinstance(kwargs, dict) else None,
        input_names=[i["name"] for i in inputs],
        input_shape=inputs[0]["shape"] if len(inputs) == 1 else None,
        precision=meta.get("reparam.precision"),
    )


def _engine(path: Path) -> Description:
    build = read_engine_sidecar(path) or {}
    return Description(str(path), "tensorrt", precision=build.get("precision"))


def deploy_manifest(path: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a directory written by `reparam deploy`; a ReparamError if there is none."""

    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ReparamError(
            f"{str(path)!r} is a directory without manifest.json",
            hint="give a file, or a directory written by `reparam deploy`",
        )
    try:
        manifest = json.loads(check_input_file(manifest_path, "deploy manifest").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReparamError(
            f"{manifest_path} is not JSON ({exc})", hint="the directory was not written by `reparam deploy`"
        ) from exc
    if not isinstance(manifest, dict):
        raise ReparamError(f"{manifest_path} is not a deploy manifest", hint="give the files one by one")
    return manifest


def _deploy_dir(path: Path) -> Description:
    deploy_manifest(path)
    desc = (
        _pt2(path / "model.pt2") if (path / "model.pt2").is_file() else Description(str(path), "deploy-dir")
    )
    desc.path, desc.kind = str(path), "deploy-dir"
    return desc


def describe(path: str | os.PathLike) -> Description:
    """The self-description of a ``.pt2``, ``.onnx``, TensorRT engine or deploy directory."""

    p = Path(path)
    if p.is_dir():
        return _deploy_dir(p)
    return {"pt2": _pt2, "onnx": _onnx, "tensorrt": _engine}[artifact_kind(p)](p)


def check_inputs_fit(descriptions: list[Description], shape: tuple[int, ...], info: dict[str, Any]) -> None:
    """Refuse, before running anything, inputs an artifact cannot take; name it, its shape and the flag."""
    for d in descriptions:
        if d.fits(shape):
            continue
        fitting = d.example_shape(batch=shape[0])
        source = f"`inputs` {info['source']}" if "samples" in info else "`input_shape`"
        raise ReparamError(
            f"{Path(d.path).name} expects input {d.input_names[0]!r} of shape {d.shape_text()}, "
            f"but the inputs ({source}) are {'x'.join(map(str, shape))}",
            hint=(f"pass `input_shape` {'x'.join(map(str, fitting))}, or " if fitting else "")
            + "re-export the artifact for this shape (`input_shape`; `export onnx --dynamic batch,height,width`)",
        )

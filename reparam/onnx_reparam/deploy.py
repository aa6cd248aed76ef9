"""``deploy_onnx``: convert -> (fp16) -> verify -> manifest, into a directory that appears whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reparam.errors import ReparamError
from reparam.onnx_reparam.check import OnnxCheck, check_onnx
from reparam.onnx_reparam.convert import OnnxConversion, convert_onnx


@dataclass
class OnnxDeployment:
    """What :func:`deploy_onnx` wrote (``output`` is None when a check failed) and every verdict."""

    output: Path | None
    conversion: OnnxConversion
    checks: dict[str, OnnxCheck] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.conversion.passed and all(c.passed for c in self.checks.values())


def load_npz_inputs(path: str | os.PathLike, input_names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """One input set from an ``.npz``: arrays named like the model's inputs, or the only array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ReparamError(f"cannot read inputs {str(path)!r}: {exc}", hint="give an .npz of arrays") from exc
    if all(n in arrays for n in input_names):
        return [{n: arrays[n] for n in input_names}]
    if len(input_names) == 1 and len(arrays) == 1:
        return [{input_names[0]: next(iter(arrays.values()))}]
    raise ReparamError(
        f"the inputs file holds {sorted(arrays)}, not the model's inputs {list(input_names)}",
        hint="name the arrays like the ONNX file's inputs",
    )


def _file_entry(path: Path) -> dict[str, Any]:
    from reparam.checkpoint import file_sha256

    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _manifest(source: Path, folder: Path, result: OnnxDeployment, tolerance: Any) -> dict[str, Any]:
    from reparam import __version__

    return {
        "reparam_version": __version__,
        "created_unix": int(time.time()),
        "source_onnx": _file_entry(source) | {"path": str(source)},
        "targets": ["onnx", *(["onnx-fp16"] if "model.fp16.onnx" in result.checks else [])],
        "verification": {
            "passed": result.passed,
            "tolerance": str(tolerance),
            "candidates": {name: c.passed for name, c in result.checks.items()},
        },
        "files": [_file_entry(p) for p in sorted(folder.iterdir()) if p.is_file()],
    }


def deploy_onnx(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fp16: bool = False,
    tolerance: Any = "fp32",
    inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    seed: int = 0,
    force: bool = False,
) -> OnnxDeployment:
    """Write ``output/`` with model.onnx (+ model.fp16.onnx), report.json and manifest.json.

    model.onnx is checked against the training-form file at ``path`` with ``tolerance``; the fp16
    file with the fp16 profile. The directory appears only when every check passed.
    """
    source, out = Path(path), Path(output)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise ReparamError(f"{str(out)!r} already exists", hint="choose a new directory, or pass force=True")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        conversion = convert_onnx(source, tmp / "model.onnx", tolerance=tolerance, inputs=inputs, seed=seed)
        result = OnnxDeployment(None, conversion)
        if conversion.check is not None:
            result.checks["model.onnx"] = conversion.check
        if conversion.passed and fp16:
            from reparam.exporters.onnx.fp16 import convert_onnx_to_fp16

            convert_onnx_to_fp16(tmp / "model.onnx", tmp / "model.fp16.onnx")
            result.checks["model.fp16.onnx"] = check_onnx(
                source, tmp / "model.fp16.onnx", tolerance="fp16", inputs=inputs, seed=seed
            )
        report = {name: c.to_dict() for name, c in result.checks.items()}
        report["conversion"] = conversion.report.to_dict()
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "model.onnx.report.json").unlink(missing_ok=True)
        if not result.passed:
            return result
        manifest = _manifest(source, tmp, result, tolerance)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o777 & ~_umask())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        result.output = out
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Golden results: the training model's inputs, outputs and per-block outputs, saved to check later.

`save_golden` runs the unfused training model once and writes a directory::

    G/golden.json   format name and version, provenance, names, block order, fp32 noise, sha256 of
    G/arrays.npz    inputs/<batch>/<name>, outputs/<batch>/<name>, blocks/<batch>/<block path>/<k>
                    (the k-th output of a block; format version 1 kept one output per block)

Golden results are a saved run of the reference: `verify_golden` reads them back as a
:class:`~reparam.verify.reference.SavedReference` and compares ONNX files, engines or ``.pt2``
artifacts with it in the verifier's own loop (`reparam.verify.core.verify`), on another machine,
without the checkpoint or the training code. Arrays are read with ``allow_pickle=False``; nothing in
a golden directory is executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reparam import __version__
from reparam.engine import convert
from reparam.equivalence import float64_copy, output_noise, run_with_block_hooks
from reparam.equivalence.capture import torch_args
from reparam.errors import ReparamError
from reparam.io import atomic_files, check_input_file, file_sha256
from reparam.runners import TorchRunner
from reparam.verify.core import make_candidate, verify
from reparam.verify.reference import SavedReference, run_batch
from reparam.verify.report import VerifyReport

FORMAT, VERSION = "reparam-golden", 2
READABLE_VERSIONS = (1, 2)
MANIFEST, ARRAYS = "golden.json", "arrays.npz"
Batch = Mapping[str, np.ndarray]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _block_paths(model: nn.Module, batch: Batch, input_names: Sequence[str]) -> list[str]:
    """The training blocks a deploy artifact can map back to (the rewrite record's boundaries)."""
    example = tuple(torch.from_numpy(np.asarray(batch[n])) for n in input_names)
    return list(convert(model, example, check=False).record.boundaries)


def _recorded_run(
    model: nn.Module, batches: Sequence[Batch], input_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], list[str]]:
    """The arrays of a golden directory (inputs, outputs, block outputs per batch), outputs by name, block order."""
    runner = TorchRunner(model, input_names)
    blocks = _block_paths(model, batches[0], input_names)
    arrays: dict[str, np.ndarray] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    order: list[str] = []
    for i, batch in enumerate(batches):
        args = torch_args(batch, input_names)
        run = run_with_block_hooks(model, blocks, lambda args=args: model(*args))
        out = run_batch(runner, batch)
        order = order or run.order
        arrays |= {f"inputs/{i}/{n}": np.asarray(batch[n]) for n in input_names}
        arrays |= {f"outputs/{i}/{n}": v for n, v in out.items()}
        arrays |= {f"blocks/{i}/{p}/{k}": a for p, value in run.values.items() for k, a in enumerate(value)}
        for n, v in out.items():
            outputs.setdefault(n, []).append(v)
    return arrays, outputs, order


def save_golden(
    model: nn.Module,
    batches: Sequence[Batch],
    path: str | os.PathLike,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Run ``model`` (eval mode) on ``batches`` and write the golden directory ``path`` atomically."""
    model.eval()
    input_names = list(TorchRunner(model).input_names)
    arrays, outputs, order = _recorded_run(model, batches, input_names)
    model64 = float64_copy(model)
    runs = [torch_args(b, input_names) for b in batches]
    noise = output_noise(model64, runs, outputs) if model64 is not None else {}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "reparam_version": __version__,
        "created_unix": int(time.time()),
        "provenance": dict(provenance or {}),
        "batches": len(batches),
        "input_names": input_names,
        "input_shapes": [list(np.asarray(b[input_names[0]]).shape) for b in batches],
        "output_names": list(outputs),
        "blocks": order,
        "fp32_noise": noise,
        "files": {ARRAYS: {"bytes": len(data), "sha256": _sha256(data)}},
    }
    target = Path(path)
    with atomic_files() as tx:
        tx.write_bytes(target / ARRAYS, data)
        tx.write_text(target / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return target


def _bad(path: Path, why: str) -> ReparamError:
    return ReparamError(
        f"golden results {str(path)!r} are unusable: {why}",
        hint="write them again with `reparam verify CKPT --save-golden DIR`",
    )


def load_golden(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and arrays of a golden directory, checksums and format checked."""
    root = Path(path)
    if not root.is_dir():
        raise ReparamError(
            f"golden results {str(root)!r} are not a directory", hint="pass the DIR given to `save_golden`"
        )
    manifest = read_golden_manifest(root)
    data = check_input_file(root / ARRAYS, "golden arrays").read_bytes()
    expected = (manifest.get("files") or {}).get(ARRAYS, {}).get("sha256")
    if _sha256(data) != expected:
        raise _bad(root, f"{ARRAYS} does not match the checksum in {MANIFEST} (changed or truncated)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise _bad(root, f"{ARRAYS} cannot be read ({exc})") from exc
    return manifest, arrays


def read_golden_manifest(root: Path) -> dict[str, Any]:
    """The checked ``golden.json`` of a golden directory (format and version), without the arrays."""
    manifest_path = check_input_file(root / MANIFEST, "golden manifest")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(root, f"{MANIFEST} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(root, f"{MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise _bad(
            root,
            f"format version {manifest.get('version')!r}; this reparam reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
        )
    return manifest


def golden_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a golden directory holds (for `reparam inspect`): its manifest and whether the arrays are intact."""
    root = Path(path)
    manifest = read_golden_manifest(root)
    arrays = root / ARRAYS
    expected = (manifest.get("files") or {}).get(ARRAYS, {}).get("sha256")
    state = "missing" if not arrays.is_file() else "ok" if file_sha256(arrays) == expected else "changed"
    keep = ("version", "reparam_version", "provenance", "batches", "input_names", "input_shapes")
    return {
        "path": str(root),
        "kind": "golden",
        "bytes": sum(p.stat().st_size for p in root.iterdir() if p.is_file()),
        **{k: manifest.get(k) for k in keep},
        "output_names": manifest.get("output_names") or [],
        "blocks": len(manifest.get("blocks") or []),
        "arrays": state,
    }


def _per_batch(arrays: Mapping[str, np.ndarray], kind: str, batch: int) -> dict[str, np.ndarray]:
    prefix = f"{kind}/{batch}/"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _block_values(arrays: Mapping[str, np.ndarray], batch: int) -> dict[str, tuple[np.ndarray, ...]]:
    """``{block path: value}`` of one batch: a block's outputs are stored as ``blocks/<batch>/<path>/<k>``."""
    parts: dict[str, dict[int, np.ndarray]] = {}
    for key, value in _per_batch(arrays, "blocks", batch).items():
        path, _, k = key.rpartition("/")
        if not path:  # format version 1: blocks/<batch>/<block path>
            path, k = key, "0"
        parts.setdefault(path, {})[int(k)] = value
    return {p: tuple(v[k] for k in sorted(v)) for p, v in parts.items()}


def _check_names(manifest: Mapping[str, Any], cand: Any, golden: Path) -> None:
    names = list(cand.runner.input_names)
    if names != list(manifest["input_names"]):
        raise ReparamError(
            f"{cand.name} takes inputs {names}, the golden results hold {manifest['input_names']}",
            hint=f"compare an artifact exported from the model the golden results {golden} came from",
        )


def saved_reference(
    root: Path, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> SavedReference:
    """The run results of a golden directory as a reference for the verifier's loop."""
    n = int(manifest["batches"])
    names = list(manifest["output_names"])
    outputs = [{k: v for k, v in _per_batch(arrays, "outputs", i).items() if k in names} for i in range(n)]
    return SavedReference(
        str(manifest.get("provenance", {}).get("reference", root)),
        [_per_batch(arrays, "inputs", i) for i in range(n)],
        outputs,
        [_block_values(arrays, i) for i in range(n)],
        manifest["blocks"],
        manifest.get("fp32_noise") or {},
        manifest["input_names"],
    )


def verify_golden(
    golden: str | os.PathLike, candidates: Sequence[Any], *, tolerance: Any = "fp32", localize: str = "auto"
) -> VerifyReport:
    """Compare candidates with golden results in the verifier's loop; a VerifyReport like `verify`'s.

    A candidate may carry its own tolerance (``Candidate.tolerance``); block outputs are compared
    in the recorded execution order and the first one beyond the limit is named.
    """
    root = Path(golden)
    manifest, arrays = load_golden(root)
    reference = saved_reference(root, manifest, arrays)
    cands = [make_candidate(c) for c in candidates]
    for cand in cands:
        _check_names(manifest, cand, root)
    info = {
        "source": f"golden results {root}",
        "batches": len(reference.batches),
        "shape": "x".join(map(str, manifest["input_shapes"][0])),
    }
    return verify(
        reference,
        cands,
        reference.batches,
        tolerance=tolerance,
        inputs_info=info,
        quant=False,
        localize=localize,
    )

"""Golden results: the training model's inputs, outputs and per-block outputs, saved to check later.

`save_golden` runs the unfused training model once and writes a directory::

    G/golden.json   format name and version, provenance, names, block order, fp32 noise, sha256 of
    G/arrays.npz    inputs/<batch>/<name>, outputs/<batch>/<name>, blocks/<batch>/<block path>/<k>
                    (the k-th output of a block; format version 1 kept one output per block)

`verify_golden` compares ONNX files, engines or ``.pt2`` artifacts with it on another machine,
without the checkpoint or the training code. Arrays are read with ``allow_pickle=False``; nothing in
a golden directory is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from reparam.errors import ReparamError
from reparam.io import atomic_files, check_input_file

FORMAT, VERSION = "reparam-golden", 2
READABLE_VERSIONS = (1, 2)
MANIFEST, ARRAYS = "golden.json", "arrays.npz"
Batch = Mapping[str, np.ndarray]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _block_paths(model: nn.Module, batch: Batch, input_names: Sequence[str]) -> list[str]:
    """The training blocks a deploy artifact can map back to (the rewrite record's boundaries)."""
    import torch

    from reparam.engine import convert

    example = tuple(torch.from_numpy(np.asarray(batch[n])) for n in input_names)
    return list(convert(model, example, check=False).record.boundaries)


def save_golden(
    model: nn.Module,
    batches: Sequence[Batch],
    path: str | os.PathLike,
    *,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Run ``model`` (eval mode) on ``batches`` and write the golden directory ``path`` atomically."""
    import io

    from reparam import __version__
    from reparam.equivalence import float64_copy, run_with_block_hooks
    from reparam.equivalence.capture import torch_args
    from reparam.runners import TorchRunner
    from reparam.verify.core import _run_all, reference_noise

    model.eval()
    runner = TorchRunner(model)
    input_names = list(runner.input_names)
    outputs = _run_all(runner, batches)
    blocks = _block_paths(model, batches[0], input_names)
    arrays: dict[str, np.ndarray] = {}
    order: list[str] = []
    for i, batch in enumerate(batches):
        args = torch_args(batch, input_names)
        run = run_with_block_hooks(model, blocks, lambda args=args: model(*args))
        order = order or run.order
        arrays |= {f"inputs/{i}/{n}": np.asarray(batch[n]) for n in input_names}
        arrays |= {f"outputs/{i}/{n}": v[i] for n, v in outputs.items()}
        arrays |= {f"blocks/{i}/{p}/{k}": a for p, value in run.values.items() for k, a in enumerate(value)}
    model64 = float64_copy(model)
    noise = reference_noise(model64, batches, input_names, outputs) if model64 is not None else {}
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
            f"golden results {str(root)!r} are not a directory", hint="pass the DIR given to --save-golden"
        )
    manifest = read_golden_manifest(root)
    data = check_input_file(root / ARRAYS, "golden arrays").read_bytes()
    expected = (manifest.get("files") or {}).get(ARRAYS, {}).get("sha256")
    if _sha256(data) != expected:
        raise _bad(root, f"{ARRAYS} does not match the checksum in {MANIFEST} (changed or truncated)")
    import io

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
    from reparam.io import file_sha256

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


def _candidate_blocks(cand: Any, batch: Batch) -> tuple[dict[str, np.ndarray], str]:
    from reparam.verify.core import _candidate_blocks as blocks_of

    try:
        return blocks_of(cand, batch, list(batch))
    except ReparamError:
        raise
    except Exception as exc:  # localization is a diagnostic; never let it hide the verdict
        return {}, f"could not localize: {type(exc).__name__}: {exc}"


def verify_golden(golden: str | os.PathLike, candidates: Sequence[Any], *, tolerance: Any = "fp32") -> Any:
    """Compare candidates with golden results; a VerifyReport like `reparam.verify.core.verify`'s.

    A candidate may carry its own tolerance (``Candidate.tolerance``); block outputs are compared
    in the recorded execution order and the first one beyond the limit is named.
    """
    from reparam.equivalence import CandidateResult, Divergence, compare_outputs, locate_divergence
    from reparam.equivalence.tolerance import make_tolerance
    from reparam.verify.core import _run_all, _worst_batch, make_candidate
    from reparam.verify.report import VerifyReport

    root = Path(golden)
    manifest, arrays = load_golden(root)
    n = int(manifest["batches"])
    batches = [_per_batch(arrays, "inputs", i) for i in range(n)]
    ref_out = {
        name: [_per_batch(arrays, "outputs", i)[name] for i in range(n)] for name in manifest["output_names"]
    }
    tol = make_tolerance(tolerance)
    info = {
        "source": f"golden results {root}",
        "batches": n,
        "shape": "x".join(map(str, manifest["input_shapes"][0])),
    }
    report = VerifyReport(str(manifest.get("provenance", {}).get("reference", root)), tol, info)
    for cand in (make_candidate(c) for c in candidates):
        _check_names(manifest, cand, root)
        cand_tol = cand.tolerance or tol
        try:
            cand_out = _run_all(cand.runner, batches)
        except ReparamError:
            raise
        except Exception as exc:
            report.candidates.append(
                CandidateResult(
                    cand.name, cand.kind, problems=[f"failed to run: {type(exc).__name__}: {exc}"]
                )
            )
            continue
        result = compare_outputs(
            ref_out,
            cand_out,
            cand_tol,
            name=cand.name,
            kind=cand.kind,
            noise=manifest.get("fp32_noise") or {},
        )
        idx = _worst_batch(ref_out, cand_out)
        cand_blocks, reason = _candidate_blocks(cand, batches[idx])
        if cand_blocks:
            result.divergence = locate_divergence(
                _block_values(arrays, idx),
                cand_blocks,
                manifest["blocks"],
                cand_tol,
                output_failed=not result.passed,
            )
        else:
            result.divergence = Divergence(
                note=reason or "no block outputs could be read from this candidate"
            )
        report.candidates.append(result)
    return report

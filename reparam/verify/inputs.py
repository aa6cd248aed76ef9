"""Inputs for verification: seeded random batches, or real data from an ``.npz`` file."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from torch import nn

from reparam.engine.inputs import DEFAULT_IMAGE_SIZE
from reparam.errors import ReparamError
from reparam.io import check_input_file

Batch = dict[str, np.ndarray]


def random_batches(
    shape: tuple[int, ...], batches: int = 2, seed: int = 0, name: str = "input"
) -> list[Batch]:
    """``batches`` float32 batches of standard-normal noise, reproducible from ``seed``."""
    if batches < 1:
        raise ReparamError(f"`batches` must be at least 1 (got {batches})", hint="e.g. `batches` 2")
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)]


_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _check_npz_magic(p: Path) -> None:
    """Refuse a file that is not a zip archive before numpy guesses it is pickled data."""
    with open(p, "rb") as f:
        head = f.read(6)
    if head.startswith(_ZIP_MAGIC):
        return
    if head.startswith(_NPY_MAGIC):
        raise ReparamError(
            f"{p.name} is a single .npy array; `inputs` takes an .npz archive",
            hint=f"convert it: python -c \"import numpy as n; n.savez('{p.stem}.npz', input=n.load('{p.name}'))\"",
        )
    what = "an empty file" if not head else "not a zip archive"
    raise ReparamError(
        f"{p.name} is not an .npz file ({what})", hint="write it with numpy.savez(path, input=array)"
    )


def load_npz_batches(
    path: str | os.PathLike,
    *,
    batch_size: int = 8,
    batches: int | None = None,
    name: str = "input",
) -> list[Batch]:
    """Split the array ``input`` (or the file's only array) along axis 0 into float32 batches.

    ``batches`` caps the number of batches taken (None = all). The last batch may be smaller.
    """
    p = check_input_file(path, "input file", hint="pass an .npz file with an array 'input'")
    _check_npz_magic(p)
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = list(data.keys())
            if "input" in keys:
                key = "input"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ReparamError(
                    f"{p.name} holds {len(keys)} arrays ({', '.join(keys) or 'none'}) and none is named 'input'",
                    hint="save the model input as np.savez(path, input=array)",
                )
            array = data[key]
    except ReparamError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ReparamError(
            f"cannot read {p.name} as an .npz file ({exc})",
            hint="write it with numpy.savez(path, input=array)",
        ) from exc
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ReparamError(
            f"array {key!r} in {p.name} has dtype {array.dtype}, not a real number type",
            hint="store the model input as float32",
        )
    if array.ndim < 2 or array.shape[0] == 0:
        raise ReparamError(
            f"array {key!r} in {p.name} has shape {array.shape}; expected (N, C, H, W) with N >= 1",
            hint="stack the samples along the first axis",
        )
    if batch_size < 1:
        raise ReparamError(f"`batch_size` must be at least 1 (got {batch_size})", hint="e.g. `batch_size` 8")
    array = array.astype(np.float32, copy=False)
    out = [
        {name: np.ascontiguousarray(array[i : i + batch_size])} for i in range(0, array.shape[0], batch_size)
    ]
    if batches is not None:
        if batches < 1:
            raise ReparamError(f"`batches` must be at least 1 (got {batches})", hint="e.g. `batches` 2")
        out = out[:batches]
    return out


def default_input_shape(model: nn.Module, batch: int = 1, size: int = DEFAULT_IMAGE_SIZE) -> tuple[int, ...]:
    """``batch x C x size x size`` with C taken from the model's first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (batch, m.in_channels, size, size)
    raise ReparamError(
        "cannot infer the input shape: the model has no Conv2d", hint="pass `input_shape` NxCxHxW"
    )


def resolve_input_shape(
    model: nn.Module | None, shape: tuple[int, ...] | None, description=None
) -> tuple[tuple[int, ...], str | None]:
    """The input shape every command uses, and a note when it was not given explicitly.

    ``shape`` if given; else what an artifact's description records; else 1xCx224x224 from the
    model's first convolution.
    """
    if shape:
        return tuple(shape), None
    recorded = description.example_shape() if description is not None else None
    if recorded:
        return (
            recorded,
            f"input shape {'x'.join(map(str, recorded))} as recorded in {Path(description.path).name}",
        )
    if model is None:
        raise ReparamError("cannot tell the input shape", hint="pass `input_shape` NxCxHxW")
    default = default_input_shape(model)
    return (
        default,
        f"no `input_shape` given: using {'x'.join(map(str, default))}, the default of every command",
    )


def make_batches(
    model: nn.Module | None,
    *,
    inputs: str | os.PathLike | None = None,
    input_shape: tuple[int, ...] | None = None,
    batches: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    description=None,
) -> tuple[list[Batch], dict, str | None]:
    """Batches from an ``.npz`` (``inputs``) or seeded random ones; a description of them; a note."""
    if inputs:
        out = load_npz_batches(inputs, batch_size=batch_size, batches=batches)
        info = {
            "source": str(inputs),
            "samples": sum(b["input"].shape[0] for b in out),
            "batches": len(out),
            "shape": "x".join(map(str, out[0]["input"].shape)),
        }
        return out, info, None
    shape, note = resolve_input_shape(model, input_shape, description)
    count = 2 if batches is None else batches
    info = {"source": "random normal", "seed": seed, "batches": count, "shape": "x".join(map(str, shape))}
    return random_batches(shape, count, seed), info, note

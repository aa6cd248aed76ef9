"""Atomic ONNX writes: one file below the protobuf limit, a ``<name>.onnx.data`` sidecar above it.

Both files are first written into a temporary directory next to the target, checked there, then
renamed into place (sidecar first, model second). An interrupted write leaves neither file behind
and restores a sidecar that was there before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError, require
from reparam.exporters.onnx.weightless import copy_fields, light_view
from reparam.io import FileTransaction

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it. Tests lower this.
EXTERNAL_DATA_THRESHOLD = 2_000_000_000


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the external-data sidecar of the ONNX file at ``path`` lives."""
    p = Path(path)
    return p.with_name(p.name + ".data")


def tensor_bytes(model: Any) -> int:
    """Bytes held by the model's initializers and constant attributes (the bulk of a CNN file)."""
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) or init.ByteSize()
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                total += len(attr.t.raw_data) or attr.t.ByteSize()
    return total


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload_size: int) -> bytes:
    """The key and length that precede a length-delimited field ``number`` of ``payload_size`` bytes."""
    return _varint(number << 3 | 2) + _varint(payload_size)


def _fields(message: Any, keep: Callable[[int], bool]) -> bytes:
    """``message`` serialized with only the fields whose number passes ``keep``."""
    part = type(message)()
    copy_fields(message, part, lambda fd: keep(fd.number))
    return part.SerializeToString()


def _has_unknown_fields(*messages: Any) -> bool:
    from google.protobuf.unknown_fields import UnknownFieldSet  # protobuf comes with onnx

    return any(len(UnknownFieldSet(m)) for m in messages)


def _write_streamed(model: Any, path: Path) -> bool:
    """Write ``model`` as ``SerializeToString`` would, one initializer at a time, so the file's bytes
    are never all in memory at once (protobuf writes fields in number order; graph is field 7 of
    ModelProto, initializer field 5 of GraphProto). False, and nothing written, where the model or
    its graph carries fields this split would lose."""
    graph = model.graph
    if not model.HasField("graph") or _has_unknown_fields(model, graph):
        return False
    graph_head = _fields(graph, lambda n: n < 5)
    graph_tail = _fields(graph, lambda n: n > 5)
    # each size is a serialization of that tensor alone (upb measures by serializing)
    inits = [(t, t.ByteSize()) for t in graph.initializer]
    graph_size = len(graph_head) + len(graph_tail) + sum(len(_field_bytes(5, n)) + n for _, n in inits)
    with open(path, "wb") as f:
        f.write(_fields(model, lambda n: n < 7) + _field_bytes(7, graph_size) + graph_head)
        for tensor, size in inits:
            f.write(_field_bytes(5, size))
            f.write(tensor.SerializeToString())
        f.write(graph_tail + _fields(model, lambda n: n > 7))
    return True


def _check(model: Any, written: Path) -> None:
    """onnx.checker (full check) on the model just written: its weights are checked one by one and
    the graph on its light view, where they are inputs of the same type and shape (shape
    inference reads no weight's values); the file itself where that view is not the same graph."""
    onnx = require("onnx", "onnx", "Writing an ONNX file")
    names = [t.name for t in model.graph.initializer]
    if model.ir_version < 4 or len(set(names)) != len(names):  # weights must be inputs / names clash
        onnx.checker.check_model(str(written), full_check=True)
        return
    light, weights = light_view(model)
    for tensor in weights.values():
        onnx.checker.check_tensor(tensor)
    onnx.checker.check_model(light, full_check=True)


def needs_external_data(model: Any, threshold: int | None = None) -> bool:
    """True when the model is too large to be written as a single protobuf file."""
    limit = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    return tensor_bytes(model) >= limit


def save_onnx(
    model: Any, path: str | os.PathLike, *, check: bool = True, threshold: int | None = None
) -> Path | None:
    """Write ``model`` to ``path`` atomically; returns the sidecar path when external data was used.

    With ``check`` the written file is validated by ``onnx.checker.check_model(full_check=True)``
    before it is moved into place, so a model that fails the checker is never written.
    """
    onnx = require("onnx", "onnx", "Writing an ONNX file")
    target = Path(path)
    if target.is_dir():
        raise ReparamError(
            f"output {str(target)!r} is a directory", hint="give a file path, e.g. -o model.onnx"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_path(target)
    external = needs_external_data(model, threshold)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_model = tmpdir / target.name
    backup = tmpdir / "previous-sidecar"
    moved_sidecar = False
    had_sidecar = sidecar.exists()
    try:
        if external:
            # save_model moves the tensor bytes out of the proto it is given: leave the caller's intact.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(
                copy,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=sidecar.name,
                size_threshold=1024,
                convert_attribute=True,
            )
        elif not _write_streamed(model, tmp_model):
            onnx.save_model(model, str(tmp_model))
        if check:
            try:
                if external:
                    onnx.checker.check_model(str(tmp_model), full_check=True)
                else:
                    _check(model, tmp_model)
            except onnx.checker.ValidationError as exc:
                raise ReparamError(
                    f"the ONNX model failed onnx.checker: {str(exc).splitlines()[0]}",
                    hint="export with another opset (`opset`) or the other exporter",
                ) from exc
        mode = 0o666 & ~_umask()
        for f in tmpdir.iterdir():
            f.chmod(mode)  # temporary files are private; the results get the usual permissions
        if had_sidecar:
            os.replace(sidecar, backup)
        if external:
            os.replace(tmpdir / sidecar.name, sidecar)
            moved_sidecar = True
        os.replace(tmp_model, target)
    except BaseException:
        if moved_sidecar:
            sidecar.unlink(missing_ok=True)
        if had_sidecar and backup.exists():
            os.replace(backup, sidecar)
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    # tmpdir still holds the previous sidecar, if any: it belonged to the file just replaced.
    shutil.rmtree(tmpdir, ignore_errors=True)
    return sidecar if external else None


def publish_onnx_files(tx: FileTransaction, folder: Path, targets: list[Path]) -> None:
    """Stage each ONNX file written under ``folder`` (same name as its target) in ``tx``, with its sidecar.

    A sidecar left next to a target by an earlier, larger model is removed in the same commit.
    """
    for target in targets:
        tx.adopt(folder / target.name, target)
        written = sidecar_path(folder / target.name)
        if written.exists():
            tx.adopt(written, sidecar_path(target))
        else:
            tx.remove(sidecar_path(target))

"""Build a serialized TensorRT engine from ONNX (TensorRT 10 and 11), with a JSON provenance sidecar.

Everything that needs no GPU lives in pure modules (capabilities, plan, profiles, timing_cache,
calib, header); this module only wires them to the TensorRT API.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reparam.errors import ReparamError, require
from reparam.exporters.onnx.fp16 import convert_onnx_to_fp16
from reparam.exporters.tensorrt.calib import load_calibration_batches, make_entropy_calibrator
from reparam.exporters.tensorrt.capabilities import Capabilities, capabilities_of, import_tensorrt
from reparam.exporters.tensorrt.header import engine_sidecar_path
from reparam.exporters.tensorrt.plan import BuildOptions, BuildPlan, make_build_plan
from reparam.exporters.tensorrt.profiles import Profile, derive_profiles, onnx_input_dims
from reparam.exporters.tensorrt.progress import BuildProgress, make_progress_monitor
from reparam.exporters.tensorrt.timing_cache import load_timing_cache, save_timing_cache
from reparam.io import atomic_write_bytes, atomic_write_text, file_sha256

Shape = Sequence[int] | Mapping[str, Sequence[int]]


@dataclass
class EngineBuildResult:
    """What ``build_engine`` wrote."""

    path: Path
    sidecar: Path
    plan: BuildPlan
    profiles: dict[str, Profile]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def onnx_is_fp16(path: str | os.PathLike) -> bool:
    """True when the ONNX file holds float16 initializers (e.g. written by convert_onnx_to_fp16)."""
    onnx = require("onnx", "onnx", "Reading an ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def onnx_is_qdq(path: str | os.PathLike) -> bool:
    """True when the ONNX file is explicitly quantized (QuantizeLinear/DequantizeLinear nodes)."""
    onnx = require("onnx", "onnx", "Reading an ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of the current CUDA device (via torch)."""
    if not torch.cuda.is_available():
        raise ReparamError(
            "no CUDA device is visible; TensorRT needs an NVIDIA GPU",
            hint="run on a machine with an NVIDIA GPU and driver (check nvidia-smi)",
        )
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def parser_errors(parser: Any) -> list[str]:
    """One line per ONNX parser error, naming the node where the parser says which one."""
    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        where = []
        for attr, label in (("node_name", "node"), ("node_operator", "op"), ("node", "index")):
            fn = getattr(err, attr, None)
            try:
                value = fn() if callable(fn) else None
            except Exception:  # older bindings raise for errors without a node
                value = None
            if value not in (None, "", -1):
                where.append(f"{label} {value}")
        desc = err.desc() if callable(getattr(err, "desc", None)) else str(err)
        lines.append(f"{desc} ({', '.join(where)})" if where else desc)
    return lines


def _fp16_copy(onnx_path: Path, workdir: Path) -> Path:
    out = workdir / (onnx_path.stem + ".fp16.onnx")
    convert_onnx_to_fp16(onnx_path, out)
    return out


@dataclass
class _Build:
    """What one build needs besides the network: TensorRT, its plan, profiles, the device, the inputs."""

    trt: Any
    caps: Capabilities
    plan: BuildPlan
    options: BuildOptions
    profiles: dict[str, Profile]
    dims: dict[str, Any]
    device: dict[str, Any]
    timing_cache: str | os.PathLike | None
    calib: str | os.PathLike | None
    cache: Any = None  # the builder's timing cache, saved after a successful build


def _parse(
    trt: Any, builder: Any, logger: Any, plan: BuildPlan, source: Path, onnx_path: Path
) -> tuple[Any, Any]:
    """The network (and its parser, which must outlive it) of the ONNX file ``source``."""
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = parser_errors(parser)
        raise ReparamError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors[:5]),
            hint="check the named nodes; re-export with another opset (`opset`) or simplify "
            "the graph (onnxsim) and retry",
        )
    return network, parser


def _configure(build: _Build, builder: Any) -> Any:
    """The builder config: flags, workspace, optimization profile, timing cache, int8 calibrator."""
    trt, plan = build.trt, build.plan
    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    if build.profiles:
        profile = builder.create_optimization_profile()
        for name, p in build.profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        if plan.int8_calibrator and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    if build.timing_cache is not None:
        raw = load_timing_cache(build.timing_cache, trt.__version__, build.device["gpu"])
        build.cache = config.create_timing_cache(raw or b"")
        config.set_timing_cache(build.cache, False)  # refuse a mismatched cache
    if plan.int8_calibrator:
        profiles, dims = build.profiles, build.dims
        batch = next(iter(profiles.values())).opt[0] if profiles else next(iter(dims.values()))[0]
        batches = load_calibration_batches(build.calib, dims, int(batch))
        config.int8_calibrator = make_entropy_calibrator(trt, batches)
    return config


def _serialize(build: _Build, onnx_path: Path, progress: bool | Any, log_level: str) -> bytes:
    """Parse, configure and build; the serialized engine."""
    trt = build.trt
    logger = trt.Logger(getattr(trt.Logger, log_level, trt.Logger.WARNING))
    with tempfile.TemporaryDirectory(prefix="reparam-trt-") as tmp:
        source = _fp16_copy(onnx_path, Path(tmp)) if build.plan.prepare_fp16_onnx else onnx_path
        builder = trt.Builder(logger)
        network, _parser = _parse(trt, builder, logger, build.plan, source, onnx_path)
        config = _configure(build, builder)
        monitor = None
        if progress and build.caps.has_progress_monitor:
            monitor = progress if isinstance(progress, BuildProgress) else BuildProgress()
            config.progress_monitor = make_progress_monitor(trt, monitor)
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if monitor is not None:
                monitor.close()
        if serialized is None:
            raise ReparamError(
                f"TensorRT could not build an engine from {onnx_path.name}",
                hint="rerun with log_level='VERBOSE' for TensorRT's reasons; a larger `workspace` "
                "or another precision may help",
            )
        return bytes(serialized)


def _provenance(build: _Build, onnx_path: Path, seconds: float) -> dict[str, Any]:
    plan = build.plan
    return {
        "tensorrt": build.trt.__version__,
        **build.device,
        "onnx": str(onnx_path),
        "onnx_sha256": file_sha256(onnx_path),
        "precision": plan.precision,
        "builder_flags": plan.builder_flags,
        "network_flags": plan.network_flags,
        "fp16_onnx_prepared": plan.prepare_fp16_onnx,
        "explicit_quantization": build.options.onnx_is_qdq,
        "workspace_bytes": plan.workspace_bytes,
        "profiles": {k: v.to_dict() for k, v in build.profiles.items()},
        "build_seconds": round(seconds, 3),
        "built_unix": int(time.time()),
        "notes": plan.notes,
    }


def _prepare(onnx_path: Path, options: BuildOptions, shapes: dict[str, Any], files: dict[str, Any]) -> _Build:
    """Check the options, derive the profiles, read TensorRT's capabilities and the device."""
    options.validate()
    dims = onnx_input_dims(onnx_path)
    profiles = derive_profiles(dims, **shapes)
    trt = import_tensorrt()
    caps = capabilities_of(trt)
    plan = make_build_plan(options, caps)
    return _Build(trt, caps, plan, options, profiles, dims, gpu_info(), **files)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str | None = None,
    input_shape: Shape | None = None,
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    calib: str | os.PathLike | None = None,
    progress: bool | Any = True,
    log_level: str = "WARNING",
) -> EngineBuildResult:
    """Build ``engine_path`` from ``onnx_path`` and write ``<engine>.json`` next to it (both atomically).

    ``precision``: "fp32", "fp16" or "int8" (None: int8 for a Q/DQ ONNX, fp16 when the ONNX already
    is, else fp32). A Q/DQ ONNX (``reparam quantize``) is built strongly typed on TensorRT 10 and 11.
    From a float ONNX, on TensorRT 10 fp16/int8 are builder flags (int8 calibrated from the ``calib``
    .npz); on TensorRT 11 the network is strongly typed, so fp16 converts the ONNX to float16 first
    and int8 needs the explicitly quantized ONNX. Profiles come from the shapes given or the ONNX's dynamic batch.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ReparamError(
            f"ONNX file {str(onnx_path)!r} does not exist", hint="export it with `reparam export onnx`"
        )
    engine_path = Path(engine_path)
    options = BuildOptions(
        precision=precision,
        workspace_mb=workspace_mb,
        calib=calib,
        timing_cache=timing_cache,
        onnx_is_fp16=onnx_is_fp16(onnx_path),
        onnx_is_qdq=onnx_is_qdq(onnx_path),
    )
    shapes = {
        "input_shape": input_shape,
        "min_shape": min_shape,
        "opt_shape": opt_shape,
        "max_shape": max_shape,
    }
    build = _prepare(
        onnx_path, options, {**shapes, "max_batch": max_batch}, {"timing_cache": timing_cache, "calib": calib}
    )
    start = time.perf_counter()
    data = _serialize(build, onnx_path, progress, log_level)
    seconds = time.perf_counter() - start
    info = _provenance(build, onnx_path, seconds)
    sidecar = engine_sidecar_path(engine_path)
    atomic_write_bytes(engine_path, data)
    atomic_write_text(sidecar, json.dumps(info, indent=2))
    if build.cache is not None and timing_cache is not None:
        save_timing_cache(
            timing_cache, bytes(build.cache.serialize()), build.trt.__version__, build.device["gpu"]
        )
    return EngineBuildResult(
        path=engine_path,
        sidecar=sidecar,
        plan=build.plan,
        profiles=build.profiles,
        seconds=seconds,
        info=info,
    )

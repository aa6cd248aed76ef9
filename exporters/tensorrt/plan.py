"""Map build options to a BuildPlan for a given TensorRT: flags by name, ONNX preparation, calibrator."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from reparam.errors import ReparamError
from reparam.exporters.tensorrt.capabilities import Capabilities

PRECISIONS = ("fp32", "fp16", "int8")
MODEL_OPTIMIZER_HINT = (
    "TensorRT 11 builds int8 only from explicitly quantized ONNX (Q/DQ nodes): quantize "
    "the model with `reparam quantize model.onnx --calib DATA.npz -o model.int8.onnx` (or NVIDIA Model "
    "Optimizer: pip install nvidia-modelopt; modelopt.onnx.quantization) and build that ONNX, "
    "or use TensorRT 10 with `calib`"
)


@dataclass
class BuildOptions:
    """What the user asked for. ``precision`` None: take it from the ONNX (fp16 ONNX -> fp16)."""

    precision: str | None = None
    workspace_mb: int | None = None
    calib: str | Path | None = None
    timing_cache: str | Path | None = None
    onnx_is_fp16: bool = False
    onnx_is_qdq: bool = False  # explicitly quantized: QuantizeLinear/DequantizeLinear nodes

    def validate(self) -> None:
        """Raise a ReparamError for an impossible combination (before any GPU work)."""
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ReparamError(
                f"unknown precision {self.precision!r}", hint=f"use one of {', '.join(PRECISIONS)}"
            )
        if self.workspace_mb is not None and int(self.workspace_mb) <= 0:
            raise ReparamError(
                f"workspace must be a positive number of MiB, not {self.workspace_mb}",
                hint="e.g. `workspace` 2048, or leave it unset for TensorRT's default",
            )
        if self.onnx_is_qdq:
            self._validate_qdq()
        elif self.precision == "int8" and self.calib is None:
            raise ReparamError(
                "int8 needs calibration data for this float ONNX, or an explicitly quantized (Q/DQ) ONNX",
                hint="quantize it first: reparam quantize model.onnx `calib` DATA.npz -o model.int8.onnx "
                "(the only int8 route on TensorRT 11); on TensorRT 10 `calib` DATA.npz also works",
            )
        if self.calib is not None and self.precision != "int8":
            raise ReparamError("`calib` only applies to int8 builds", hint="add `int8` or drop `calib`")
        if self.calib is not None and not Path(self.calib).is_file():
            raise ReparamError(f"calibration file {str(self.calib)!r} does not exist", hint="check the path")
        if self.onnx_is_fp16 and self.precision in ("fp32", "int8") and not self.onnx_is_qdq:
            raise ReparamError(
                f"the ONNX already has float16 weights; a {self.precision} engine cannot be built from it",
                hint="build from the float32 ONNX export instead",
            )

    def _validate_qdq(self) -> None:
        if self.precision in ("fp32", "fp16"):
            raise ReparamError(
                f"the ONNX is explicitly quantized (Q/DQ nodes); a {self.precision} engine cannot be built from it",
                hint="build it without a precision option (int8 from its Q/DQ nodes), or build the float ONNX",
            )
        if self.calib is not None:
            raise ReparamError(
                "the ONNX is already quantized (Q/DQ nodes carry its int8 scales); `calib` does not apply",
                hint="drop `calib`; to recalibrate, run reparam quantize on the float ONNX",
            )


@dataclass
class BuildPlan:
    """How to build on one TensorRT: builder/network flags by name and the steps around them."""

    precision: str
    tensorrt: str
    builder_flags: list[str] = field(default_factory=list)
    network_flags: list[str] = field(default_factory=list)
    prepare_fp16_onnx: bool = False
    int8_calibrator: bool = False
    workspace_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_build_plan(options: BuildOptions, caps: Capabilities) -> BuildPlan:
    """Decide flags and steps for ``options`` on the TensorRT described by ``caps`` (pure)."""
    options.validate()
    default = "int8" if options.onnx_is_qdq else "fp16" if options.onnx_is_fp16 else "fp32"
    precision = options.precision or default
    plan = BuildPlan(precision=precision, tensorrt=caps.version)
    if options.workspace_mb is not None:
        if not caps.has_memory_pool_limit:
            raise ReparamError(f"TensorRT {caps.version} has no memory pool limits", hint="drop `workspace`")
        plan.workspace_bytes = int(options.workspace_mb) << 20
    if precision == "fp16":
        if options.onnx_is_fp16:
            # The types are in the ONNX already: build it as typed (TensorRT 11 always does).
            if caps.has_strongly_typed:
                plan.network_flags.append("STRONGLY_TYPED")
            elif not caps.always_strongly_typed:
                plan.builder_flags.append("FP16")
                plan.notes.append(
                    "no strongly typed networks in this TensorRT: fp16 ONNX built with the FP16 flag"
                )
        elif caps.has_fp16_flag:
            plan.builder_flags.append("FP16")
        elif caps.has_strongly_typed or caps.always_strongly_typed:
            plan.prepare_fp16_onnx = True
            if caps.has_strongly_typed:
                plan.network_flags.append("STRONGLY_TYPED")
            plan.notes.append("strongly typed build: the ONNX is converted to float16 (float32 I/O) first")
        else:
            raise ReparamError(
                f"TensorRT {caps.version} offers neither an FP16 flag nor strongly typed networks",
                hint="install TensorRT 10 or newer",
            )
    elif precision == "int8" and options.onnx_is_qdq:
        _plan_explicit_int8(plan, caps)
    elif precision == "int8":
        if not (caps.has_int8_flag and caps.has_int8_calibrator):
            raise ReparamError(
                f"TensorRT {caps.version} has no implicit int8 calibration", hint=MODEL_OPTIMIZER_HINT
            )
        plan.builder_flags.append("INT8")
        if caps.has_fp16_flag:
            plan.builder_flags.append("FP16")  # layers without an int8 kernel fall back to fp16, not fp32
        plan.int8_calibrator = True
        plan.notes.append(
            f"implicit int8 with an entropy calibrator is deprecated since TensorRT 10.1; "
            f"{MODEL_OPTIMIZER_HINT.split(': ', 1)[1]}"
        )
    return plan


def _plan_explicit_int8(plan: BuildPlan, caps: Capabilities) -> None:
    """Q/DQ ONNX: the precision is in the graph; build it as typed where TensorRT can."""
    if caps.has_strongly_typed:
        plan.network_flags.append("STRONGLY_TYPED")
        plan.notes.append(
            "explicit quantization: the Q/DQ ONNX is built strongly typed (int8 where it says so)"
        )
    elif caps.always_strongly_typed and caps.major >= 11:
        plan.notes.append("explicit quantization: TensorRT 11 builds the Q/DQ ONNX strongly typed")
    elif caps.has_int8_flag:
        plan.builder_flags.append("INT8")  # weakly typed TensorRT: Q/DQ layers need the INT8 flag
        plan.notes.append("no strongly typed networks in this TensorRT: Q/DQ ONNX built with the INT8 flag")
    else:
        raise ReparamError(
            f"TensorRT {caps.version} can build neither strongly typed nor INT8 networks",
            hint="install TensorRT 10 or newer",
        )

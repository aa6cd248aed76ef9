"""What a TensorRT engine file's header and sidecar say (see :mod:`reparam.tensorrt_plan`)."""

from reparam.tensorrt_plan import (
    HEADER_BYTES,
    MAJOR_OFFSET,
    PLAUSIBLE_MAJORS,
    PlanHeader,
    check_engine_version,
    engine_sidecar_path,
    parse_plan_header,
    read_engine_sidecar,
    read_plan_header,
)

__all__ = [
    "HEADER_BYTES",
    "MAJOR_OFFSET",
    "PLAUSIBLE_MAJORS",
    "PlanHeader",
    "check_engine_version",
    "engine_sidecar_path",
    "parse_plan_header",
    "read_engine_sidecar",
    "read_plan_header",
]

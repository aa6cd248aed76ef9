"""TensorRT engines from ONNX for TensorRT 10 and 11, branching on capabilities by name.

The GPU-free parts (capabilities, build plan, profiles, plan header, timing-cache keys, calibration
data) are pure functions; ``build_engine`` wires them to the TensorRT API.
"""

from reparam.exporters.tensorrt.build import (
    EngineBuildResult,
    build_engine,
    onnx_is_fp16,
    onnx_is_qdq,
    parser_errors,
)
from reparam.exporters.tensorrt.capabilities import (
    INSTALL_HINT,
    Capabilities,
    capabilities_of,
    import_tensorrt,
)
from reparam.exporters.tensorrt.header import (
    PlanHeader,
    engine_sidecar_path,
    parse_plan_header,
    read_engine_sidecar,
    read_plan_header,
)
from reparam.exporters.tensorrt.plan import PRECISIONS, BuildOptions, BuildPlan, make_build_plan
from reparam.exporters.tensorrt.profiles import Profile, derive_profiles, onnx_input_dims
from reparam.exporters.tensorrt.timing_cache import default_cache_name, pack_timing_cache, unpack_timing_cache

__all__ = [
    "INSTALL_HINT",
    "PRECISIONS",
    "BuildOptions",
    "BuildPlan",
    "Capabilities",
    "EngineBuildResult",
    "PlanHeader",
    "Profile",
    "build_engine",
    "capabilities_of",
    "default_cache_name",
    "derive_profiles",
    "engine_sidecar_path",
    "import_tensorrt",
    "make_build_plan",
    "onnx_input_dims",
    "onnx_is_fp16",
    "onnx_is_qdq",
    "pack_timing_cache",
    "parse_plan_header",
    "parser_errors",
    "read_engine_sidecar",
    "read_plan_header",
    "unpack_timing_cache",
]

"""ONNX export: torch.onnx (dynamo or legacy), onnxsim, checker, provenance metadata, atomic writes, fp16."""

from reparam.exporters.onnx.export import (
    BATCH_DIM,
    BOUNDARY_KEY,
    OnnxExportResult,
    check_dynamic_axes,
    export_onnx,
    normalize_dynamic_axes,
    op_counts,
)
from reparam.exporters.onnx.fp16 import convert_fp16, convert_onnx_to_fp16, to_fp16_model
from reparam.exporters.onnx.save import (
    EXTERNAL_DATA_THRESHOLD,
    needs_external_data,
    publish_onnx_files,
    save_onnx,
    sidecar_path,
)
from reparam.exporters.onnx.summary import onnx_summary

__all__ = [
    "BATCH_DIM",
    "BOUNDARY_KEY",
    "EXTERNAL_DATA_THRESHOLD",
    "OnnxExportResult",
    "check_dynamic_axes",
    "convert_fp16",
    "convert_onnx_to_fp16",
    "export_onnx",
    "needs_external_data",
    "normalize_dynamic_axes",
    "onnx_summary",
    "publish_onnx_files",
    "op_counts",
    "save_onnx",
    "sidecar_path",
    "to_fp16_model",
]

"""Post-training int8 quantization to explicitly quantized (Q/DQ) ONNX, for TensorRT 10.1+ and 11.

``quantize`` writes the Q/DQ model; ``verify_int8`` compares it with the unfused training model on a
held-out set; ``layer_sensitivity`` and ``repair`` find the layers int8 hurts most and keep them
float until an agreement target is met.
"""

from reparam.quantize.calib import InputSpec, load_calibration, onnx_input_specs
from reparam.quantize.qdq import (
    METHODS,
    QuantizeResult,
    check_qdq_layout,
    is_qdq,
    quantize,
    weighted_layers,
)

__all__ = [
    "METHODS",
    "InputSpec",
    "QuantizeResult",
    "check_qdq_layout",
    "is_qdq",
    "load_calibration",
    "onnx_input_specs",
    "quantize",
    "weighted_layers",
]

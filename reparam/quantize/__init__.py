"""Post-training int8 quantization to explicitly quantized (Q/DQ) ONNX, for TensorRT 10.1+ and 11.

``quantize`` writes the Q/DQ model; ``verify_int8`` compares it with the unfused training model on a
held-out set; ``layer_sensitivity`` and ``repair`` find the layers int8 hurts most and keep them
float until an agreement target is met.
"""

from reparam.quantize.calib import InputSpec, load_calibration, load_labels, onnx_input_specs
from reparam.quantize.evaluate import Int8Verification, int8_tolerance, verify_int8
from reparam.quantize.qdq import METHODS, check_qdq_layout, is_qdq, weighted_layers
from reparam.quantize.sensitivity import LayerSensitivity, RepairResult, layer_sensitivity, repair
from reparam.quantize.write import QuantizeResult, quantize

__all__ = [
    "METHODS",
    "InputSpec",
    "Int8Verification",
    "LayerSensitivity",
    "QuantizeResult",
    "RepairResult",
    "check_qdq_layout",
    "int8_tolerance",
    "is_qdq",
    "layer_sensitivity",
    "load_calibration",
    "load_labels",
    "onnx_input_specs",
    "quantize",
    "repair",
    "verify_int8",
    "weighted_layers",
]

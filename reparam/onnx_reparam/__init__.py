"""Re-parameterize a training-form ONNX file: fold BatchNorms and merge summed branches exactly.

``convert_onnx`` rewrites the graph (float64 arithmetic from :mod:`reparam.kernel_math`) and checks
the result in ONNX Runtime against the input file; ``verify_onnx`` compares any two ONNX files;
``deploy_onnx`` runs convert -> (fp16) -> verify and writes a manifest.
"""

from reparam.onnx_reparam.check import OnnxCheck, check_onnx
from reparam.onnx_reparam.convert import OnnxConversion, convert_onnx, rewrite_onnx, verify_onnx
from reparam.onnx_reparam.deploy import OnnxDeployment, deploy_onnx
from reparam.onnx_reparam.rewrite import RewriteResult, rewrite_graph

__all__ = [
    "OnnxCheck",
    "OnnxConversion",
    "OnnxDeployment",
    "RewriteResult",
    "check_onnx",
    "convert_onnx",
    "deploy_onnx",
    "rewrite_graph",
    "rewrite_onnx",
    "verify_onnx",
]

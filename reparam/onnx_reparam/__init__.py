"""Re-parameterize a training-form ONNX file: fold BatchNorms and merge summed branches exactly.

``convert_onnx`` rewrites the graph (float64 arithmetic from :mod:`reparam.kernel_math`) and checks
the result in ONNX Runtime against the input file; ``verify_onnx`` compares any two ONNX files;
``deploy_onnx`` runs convert -> (fp16) -> verify and writes a manifest.
"""

from reparam.onnx_reparam.rewrite import RewriteResult, rewrite_graph

__all__ = ["RewriteResult", "rewrite_graph"]

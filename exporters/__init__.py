"""Exporters: produce deployable files (ONNX models, TensorRT engines) from reparam models."""

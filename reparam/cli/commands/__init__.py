"""One module per subcommand. Each defines ``register(subparsers)`` that adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code).

``SUMMARIES`` holds each command's one-line help: ``reparam --help`` lists the commands from it
without importing them (their modules import torch).
"""

SUMMARIES = {
    "zoo": "list the built-in models",
    "expand": "expand a plain CNN checkpoint into its re-parameterizable training form",
    "convert": "fuse a training checkpoint into its deploy form and save it as a .pt2 artifact",
    "export": "export a deploy model to ONNX, or build a TensorRT engine from ONNX",
    "inspect": "show what an .onnx, engine, .pt2, checkpoint, deploy or golden directory holds",
    "verify": "verify deploy artifacts against the training model",
    "deploy": "convert, export and verify in one step",
    "quantize": "int8 Q/DQ ONNX for TensorRT from a float deploy ONNX, calibrated and verified",
    "slim": "learn a ScaleNet allocation: keep the SA channels with the largest BN |γ| under a MAC budget",
    "bench": "benchmark training vs deploy vs plain latency and the cost of conversion",
}

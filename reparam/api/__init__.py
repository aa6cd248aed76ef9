"""The application layer: one function per command, typed requests in, typed results out.

`ModelSource`, `InputSpec` and `Judge` say where the model comes from, what the inputs look like
and how outputs are judged; each resolves itself one way for every command. The functions here
print nothing: the CLI parses flags into requests, calls them and renders what they return, and
`reparam.deploy` is the same call with keyword arguments.
"""

from __future__ import annotations

from reparam.api.convert_command import ConvertOutcome, PlainTarget, convert
from reparam.api.deploy_command import DeployOptions, DeployResult, deploy
from reparam.api.expand_command import ExpandOutcome, expand_checkpoint
from reparam.api.export_command import (
    EngineOptions,
    OnnxOptions,
    OnnxOutcome,
    build_engine_file,
    export_onnx_file,
)
from reparam.api.inspect_command import inspect
from reparam.api.quantize_command import QuantizeOptions, QuantizeOutcome, quantize_onnx
from reparam.api.requests import Batches, InputSpec, Judge, LoadedModel, ModelSource
from reparam.api.slim_command import slim
from reparam.api.verify_command import VerifyOutcome, verify

__all__ = [
    "Batches",
    "ConvertOutcome",
    "DeployOptions",
    "DeployResult",
    "EngineOptions",
    "ExpandOutcome",
    "InputSpec",
    "Judge",
    "LoadedModel",
    "ModelSource",
    "OnnxOptions",
    "OnnxOutcome",
    "PlainTarget",
    "QuantizeOptions",
    "QuantizeOutcome",
    "VerifyOutcome",
    "build_engine_file",
    "convert",
    "deploy",
    "expand_checkpoint",
    "export_onnx_file",
    "inspect",
    "quantize_onnx",
    "slim",
    "verify",
]

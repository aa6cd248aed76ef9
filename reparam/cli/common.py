"""Arguments and helpers shared by several subcommands (model loading, input shapes)."""

from __future__ import annotations

import argparse
import json

from reparam.api.requests import InputSpec, Judge, ModelSource
from reparam.checkpoint import load_model
from reparam.cli.console import note
from reparam.equivalence.tolerance import parse_tolerance_overrides
from reparam.errors import ReparamError
from reparam.io import check_input_file
from reparam.verify.inputs import DEFAULT_IMAGE_SIZE, resolve_input_shape


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (or ``1,3,224,224``) into a tuple of positive ints."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise ReparamError(
            f"invalid input shape {text!r}",
            hint="write the shape as NxCxHxW with positive integers, e.g. --input-shape 1x3x224x224",
        )
    return dims


def input_shape_help(what: str) -> str:
    """``--input-shape`` help stating the one default rule (`input_shape_for`)."""

    size = DEFAULT_IMAGE_SIZE
    return (
        f"{what} (default: the shape an artifact records, else 1xCx{size}x{size} with C from the "
        "first conv; a note names the shape chosen)"
    )


def input_shape_for(model, text: str | None, description=None) -> tuple[int, ...]:
    """``--input-shape`` if given, else what an artifact records, else the default 1xCx224x224.

    Every command uses this one rule (`reparam.verify.inputs.resolve_input_shape`) and says so in a
    note when it had to choose.
    """

    shape, text_note = resolve_input_shape(model, parse_shape(text) if text else None, description)
    if text_note:
        note(text_note)
    return shape


def parse_json_kwargs(text: str | None) -> dict:
    """Parse ``--arch-kwargs`` JSON into a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReparamError(
            f"--arch-kwargs is not valid JSON ({exc.msg} at column {exc.colno})",
            hint='pass a JSON object, e.g. --arch-kwargs \'{"num_classes": 10, "width": 0.25}\'',
        ) from exc
    if not isinstance(value, dict):
        raise ReparamError(
            "--arch-kwargs must be a JSON object", hint="e.g. --arch-kwargs '{\"num_classes\": 10}'"
        )
    return value


def add_model_arguments(
    parser: argparse.ArgumentParser, *, checkpoint_help: str = "training checkpoint"
) -> None:
    """Add CKPT, --arch, --arch-kwargs and --trust-pickle (shared by convert, export, verify, deploy)."""
    parser.add_argument("checkpoint", metavar="CKPT", help=checkpoint_help)
    add_arch_arguments(parser)
    add_state_dict_arguments(parser)


def add_arch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --arch, --arch-kwargs and --trust-pickle."""
    parser.add_argument(
        "--arch",
        help="zoo model name (see `reparam zoo`) or 'package.module:factory'; "
        "defaults to the architecture recorded in the checkpoint",
    )
    parser.add_argument("--arch-kwargs", help="JSON object of keyword arguments for the architecture")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a checkpoint that holds a pickled module (executes code from the file)",
    )
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="refuse models and inputs estimated to need more memory than this, e.g. 32G "
        "(default: $REPARAM_MAX_MEMORY, else half the physical memory)",
    )


def add_state_dict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --state-dict-key and --strip-prefix (which weights of a checkpoint to use)."""
    parser.add_argument(
        "--state-dict-key",
        metavar="KEY",
        help="checkpoint entry holding the weights, e.g. model_ema or state_dict_ema (default: the "
        "non-EMA entry; a note names the choice when there are several)",
    )
    parser.add_argument(
        "--strip-prefix",
        metavar="PREFIX",
        help="remove PREFIX from every weight name, e.g. 'model.' for Lightning checkpoints "
        "('module.' and '_orig_mod.' are always removed)",
    )


def model_source(args: argparse.Namespace, checkpoint: str | None = None) -> ModelSource:
    """The parsed CKPT, --arch, --arch-kwargs, --trust-pickle, --max-memory, --state-dict-key, --strip-prefix."""
    return ModelSource(
        checkpoint if checkpoint is not None else args.checkpoint,
        arch=args.arch,
        arch_kwargs=parse_json_kwargs(args.arch_kwargs) if args.arch_kwargs else None,
        state_dict_key=getattr(args, "state_dict_key", None),
        strip_prefix=getattr(args, "strip_prefix", None),
        trust_pickle=args.trust_pickle,
        max_memory=args.max_memory,
    )


def input_spec(args: argparse.Namespace) -> InputSpec:
    """The parsed --inputs, --input-shape, --batches, --batch-size, --seed (those the command has)."""
    shape = getattr(args, "input_shape", None)
    return InputSpec(
        inputs=getattr(args, "inputs", None),
        input_shape=parse_shape(shape) if shape else None,
        batches=getattr(args, "batches", None),
        batch_size=getattr(args, "batch_size", 8),
        seed=getattr(args, "seed", 0),
    )


def judge(args: argparse.Namespace) -> Judge:
    """The parsed --tolerance, --atol, --rtol."""

    return Judge(
        args.tolerance,
        parse_tolerance_overrides(args.atol, "--atol"),
        parse_tolerance_overrides(args.rtol, "--rtol"),
    )


def load_model_from_args(
    args: argparse.Namespace, checkpoint: str | None = None, described_by: dict | None = None
):
    """Build the training-form model from parsed arguments and load its weights (eval mode)."""

    path = check_input_file(checkpoint or args.checkpoint, "checkpoint")
    model = load_model(
        path,
        arch=args.arch,
        arch_kwargs=parse_json_kwargs(args.arch_kwargs) if args.arch_kwargs else None,
        trust_pickle=args.trust_pickle,
        max_bytes=args.max_memory,
        state_dict_key=getattr(args, "state_dict_key", None),
        strip_prefix=getattr(args, "strip_prefix", None),
        described_by=described_by,
    )
    for text in (getattr(model, "reparam_source", None) or {}).get("notes", []):
        note(text)
    return model

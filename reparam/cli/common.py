"""Arguments and helpers shared by several subcommands (model loading, input shapes)."""

from __future__ import annotations

import argparse
import json

from reparam.errors import ReparamError


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


def load_model_from_args(args: argparse.Namespace, checkpoint: str | None = None):
    """Build the training-form model from parsed arguments and load its weights (eval mode)."""
    from reparam.checkpoint import load_model

    return load_model(
        checkpoint or args.checkpoint,
        arch=args.arch,
        arch_kwargs=parse_json_kwargs(args.arch_kwargs) if args.arch_kwargs else None,
        trust_pickle=args.trust_pickle,
        max_bytes=args.max_memory,
    )

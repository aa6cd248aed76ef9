"""`reparam zoo`: list the model zoo with parameter counts and descriptions."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from reparam.cli.commands import SUMMARIES
from reparam.errors import ReparamError
from reparam.profile import count_params
from reparam.zoo import create_model, list_models, model_info


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help=SUMMARIES["zoo"],
        description="List the model zoo: name, parameter count at the given width and a description. "
        "Parameter counts need each model to be built (a few seconds for the whole zoo).",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier for the counts (default 1.0)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def _format_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} K"


def run(args: argparse.Namespace) -> int:
    if args.width <= 0:
        raise ReparamError(f"--width must be positive, got {args.width}", hint="e.g. --width 0.25")
    names = args.names or list_models()
    rows = []
    for name in names:
        info = model_info(name)  # unknown names raise with close matches before anything is built
        with torch.device("meta"):
            # Parameter counts only need shapes: build on the meta device to skip allocation and init.
            model = create_model(name, width=args.width)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "description": info["description"],
                "paper": info["paper"],
                "counterpart": info["counterpart"],
                "default_kwargs": {k: _jsonable(v) for k, v in info["default_kwargs"].items()},
            }
        )
    if args.json:
        json.dump({"width": args.width, "models": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    name_w = max(len("model"), *(len(r["name"]) for r in rows))
    sys.stdout.write(f"{'model':<{name_w}}  {'params':>9}  description\n")
    for r in rows:
        sys.stdout.write(f"{r['name']:<{name_w}}  {_format_params(r['params']):>9}  {r['description']}\n")
    if args.width != 1.0:
        sys.stdout.write(f"(parameter counts at width {args.width})\n")
    return 0


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value

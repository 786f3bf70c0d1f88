"""Command line: ``python -m nbopt profile torchvision:resnet50 --input 1,3,224,224`` and ``python -m nbopt demo``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

import torch
from torch import nn

from .display import format as fmt
from .display import tables
from .errors import NboptError
from .profiling import profile
from .profiling.api import ENGINES


def load_model(spec: str) -> nn.Module:
    """``torchvision:resnet50`` (random weights) or ``package.module:factory`` (called with no arguments)."""
    if ":" not in spec:
        raise NboptError(f"model spec {spec!r} needs the form 'torchvision:NAME' or 'module.path:factory'")
    module_name, attr = spec.split(":", 1)
    if module_name == "torchvision":
        import torchvision
        try:
            return torchvision.models.get_model(attr, weights=None)
        except ValueError:
            raise NboptError(f"torchvision has no model {attr!r}; see torchvision.models.list_models()") from None
    try:
        factory: Callable[[], nn.Module] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise NboptError(f"cannot load {spec!r}: {exc}") from None
    try:
        model = factory() if not isinstance(factory, nn.Module) else factory
    except TypeError as exc:  # a factory that needs arguments: the spec's problem, not a bug
        raise NboptError(str(exc)) from None
    if not isinstance(model, nn.Module):
        raise NboptError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise NboptError(f"--input must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise NboptError(f"--input dimensions must be positive, got {text!r}")
    return shape


def cmd_profile(args: argparse.Namespace) -> int:
    model = load_model(args.model).eval()
    x = torch.randn(parse_shape(args.input))
    prof = profile(model, x, latency=not args.no_latency, engine=args.engine)
    print(tables.profile_text(prof, top=args.top, by=args.by, depth=args.depth, max_rows=None))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Profile the bundled, trained digits CNN and show its measured held-out accuracy."""
    from . import demo
    model = demo.load_model()
    print(f"nbopt demo: DigitsNet trained on scikit-learn's digits, "
          f"held-out accuracy {100 * demo.evaluate(model):.2f}% (measured on 360 images)\n")
    prof = profile(model, demo.example_input(1))
    print(tables.profile_text(prof))
    print("\nBy layer type:")
    print(fmt.format_table(prof.by_type()).to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbopt", description="Profile and optimize PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="per-layer params, MACs, FLOPs and latency of a model")
    p.add_argument("model", help="torchvision:NAME or module.path:factory")
    p.add_argument("--input", default="1,3,224,224", help="input shape, e.g. 1,3,224,224")
    p.add_argument("--top", type=int, default=None, help="show only the K layers with most MACs")
    p.add_argument("--by", choices=tables.VIEWS, default="layer")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--engine", choices=ENGINES, default="aten")
    p.add_argument("--no-latency", action="store_true")
    p.set_defaults(func=cmd_profile)
    d = sub.add_parser("demo", help="profile the bundled digits CNN")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NboptError as exc:  # deliberate errors (bad spec, shape, input): one line; anything else is a bug
        print(f"nbopt: error: {exc}", file=sys.stderr)
        return 2

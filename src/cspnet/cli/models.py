"""``cspnet models [PATTERN]``: the registered models with their parameter counts."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'csp*' (default: all)")
    p.add_argument("--names-only", action="store_true", help="print the names alone")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cspnet import create_model, get_model_entry, list_models
    from cspnet.models.backbone import count_params

    names = list_models(args.pattern)
    if not names:
        from cspnet.cli.main import CLIError

        raise CLIError(f"no model matches {args.pattern!r}; try `cspnet models` for the full list")
    if args.names_only:
        print("\n".join(names))
        return 0
    rows = []
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for name in names:
            entry = get_model_entry(name)
            params = count_params(create_model(name))
            rows.append((name, f"{params:,}", "x".join(map(str, entry.input_size[1:])), entry.description))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "input", "")]) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'input':<{widths[2]}}  description")
    for name, params, size, desc in rows:
        print(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {size:<{widths[2]}}  {desc}")
    return 0

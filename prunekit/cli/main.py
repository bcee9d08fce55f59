"""The ``prunekit`` command: demo, run, inspect, analyze. The only place that writes to the terminal."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .. import __version__
from ..errors import PrunekitError
from .console import emit_err

SUBCOMMANDS = ["prunekit.cli.demo", "prunekit.cli.run", "prunekit.cli.inspect", "prunekit.cli.analyze"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Make trained PyTorch networks smaller and faster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # an optional subcommand that is not installed
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args) or 0)
    except PrunekitError as exc:
        emit_err(f"prunekit: error: {exc}")
        code = 2
    except KeyboardInterrupt:
        emit_err("prunekit: interrupted")
        code = 130
    if _in_process_group():
        # a torchrun rank leaves the group together with the others and ends without interpreter
        # finalization (see prunekit.train.distributed.exit_rank: the group's threads abort it otherwise)
        from ..train import distributed

        distributed.exit_rank(code)
    return code


def _in_process_group() -> bool:
    """True when this process is a rank of a torchrun job (only a command that ran a recipe can have joined one)."""
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

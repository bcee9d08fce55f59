"""The ``prunekit`` command: demo, run, inspect, analyze. The only place that writes to the terminal."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
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
    if _leave_process_group():
        # A torchrun rank ends here, without interpreter finalization: the process group's worker
        # threads may still release tensors then, and a thread asking for the GIL during
        # finalization aborts the process (SIGABRT) after the run has succeeded.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _leave_process_group() -> bool:
    """Under torchrun, every rank leaves the process group together; True when this process was in one."""
    if "torch.distributed" not in sys.modules:  # only a command that ran a recipe can have joined one
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    from ..train import distributed

    distributed.shutdown()
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

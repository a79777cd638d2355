"""`gpperf-torch` command line: tune | train | eval | report | select | inspect.

Each subcommand lives beside the code it drives: a module in SUBCOMMAND_MODULES exposes
``add_cli(subparsers)``, which adds its parser(s) and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMAND_MODULES = (
    "gpperf_torch.tune",  # tune
    "gpperf_torch.train",  # train, eval
    "gpperf_torch.report",  # report
    "gpperf_torch.selector",  # select
    "gpperf_torch.kernel_inspect",  # inspect
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpperf-torch",
        description="Per-shape tile selection for Triton matmul: tune, train, evaluate, select.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # a training-only extra is missing: say which, keep the other commands
            missing = getattr(e, "name", None) or str(e)
            p = sub.add_parser(name.rsplit(".", 1)[1], help=f"(unavailable: {missing} not installed)")
            p.set_defaults(func=lambda args, m=missing: _missing(m))
            continue
        module.add_cli(sub)
    return parser


def _missing(what: str) -> int:
    print(
        f"gpperf-torch: this command needs {what}; install the extra: pip install 'gpperf-torch[train]'",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

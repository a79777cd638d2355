"""`gpperf-torch` command line: tune | train | eval | report | select | inspect | table (and more that register).

Each subcommand is a module of this package (cli/) that drives the public functions of one room: a module in
SUBCOMMAND_MODULES exposes ``add_cli(subparsers)``, which adds its parser(s) and sets ``func(args) -> int``.

Ordinary mistakes (a missing or malformed file, a bad argument value, a model that does not load) are printed
by `main` as ONE line, ``gpperf-torch <command>: <what and where>``, exit status 2, for every subcommand,
including ones added later: a subcommand only has to raise ValueError / OSError (see `is_user_error`). `-v`
shows the traceback as well.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import logging
import os
import sys

SUBCOMMAND_MODULES = (
    "gpperf_torch.cli.tune",  # tune
    "gpperf_torch.cli.train",  # train, eval
    "gpperf_torch.cli.report",  # report
    "gpperf_torch.cli.select",  # select
    "gpperf_torch.cli.inspect",  # inspect
    "gpperf_torch.cli.table",  # table show | merge
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
PROG = "gpperf-torch"

logger = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """An argument error is one line too (argparse would print the usage first); subcommand parsers are made of
    this class as well (argparse creates them with the parent's class), including ones added later."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Per-shape tile selection for Triton matmul: tune, train, evaluate, select.",
        epilog="A mistake in a file or an argument is reported as one line with exit status 2; -v adds the traceback.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks on errors)")
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
        f"{PROG}: this command needs {what}; install the extra: pip install 'gpperf-torch[train]'",
        file=sys.stderr,
    )
    return EXIT_USER_ERROR


def is_user_error(e: BaseException) -> bool:
    """Errors that describe what the user gave rather than a bug: ValueError (errors.UserError, ModelError,
    json/unicode decode errors, ...), OSError (missing file, a directory where a file belongs, permissions) and
    csv.Error. Everything else is a bug and keeps its traceback."""
    return isinstance(e, (ValueError, OSError, csv.Error))


def one_line(e: BaseException) -> str:
    """The message of `e` on one line; an OSError names its file first."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        target = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        text = f"{target}: {e.strerror}"
    elif isinstance(e, UnicodeDecodeError):
        text = f"not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not {e.encoding})"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def user_error_message(command: str | None, e: BaseException) -> str:
    text = one_line(e)
    prefix = f"{PROG} {command}: " if command else f"{PROG}: "
    # Some subcommands already prefix their messages; never print the prefix twice.
    return text if text.startswith(PROG) else prefix + text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return rc
    except BrokenPipeError:
        # `gpperf-torch ... | head`: the reader has what it wanted. Quiet, like other Unix tools, and with nothing
        # left for Python's exit-time flush to fail on.
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_user_error(e):
            raise
        if args.verbose:
            logger.exception("traceback of the error below")
        print(user_error_message(args.command, e), file=sys.stderr)
        return EXIT_USER_ERROR


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())

"""The ``dalle`` command line: one sub-command per job, each defined in its own module.

Errors a user can fix (bad paths, bad numbers, bad files) are ``ValueError``s raised by the
library, and ``OSError``s from the system (a full disk, a read-only folder); they print as one
line on stderr with exit status 2. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from dalle import __version__
from dalle.cli import (
    convert,
    data,
    demo,
    evaluate,
    generate,
    plan,
    plot,
    serve,
    tokenizer_cli,
    train,
    train_clip,
    train_vae,
)

COMMANDS = (
    data, tokenizer_cli, train_vae, train, train_clip, plan, generate, evaluate, plot, convert, demo,
    serve,
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dalle",
        description="Train a DALL-E on image-caption pairs and generate images from text.",
    )
    parser.add_argument("--version", action="version", version=f"dalle {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def error_line(e: BaseException) -> str:
    """One line for the user: an OSError as ``PATH: reason``, anything else its first line."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # OSError: a full disk, a read-only or missing folder
        if args.debug:
            raise
        print(f"dalle {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dalle {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from dalle.train import distributed

        distributed.teardown()

"""The ``dalle`` command line: one sub-command per job, each defined in its own module.

Errors a user can fix (bad paths, bad numbers, bad files) are ``ValueError``s raised by the
library; they print as one line on stderr with exit status 2. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from dalle import __version__
from dalle.cli import (
    clip,
    convert,
    data,
    demo,
    evaluate,
    generate,
    plot,
    serve,
    tokenizer,
    train,
    vae,
)

COMMANDS = (data, tokenizer, vae, train, clip, generate, evaluate, plot, convert, demo, serve)


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        print(f"dalle {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dalle {args.command}: interrupted", file=sys.stderr)
        return 130

"""``dalle serve``: load a model once and serve the HTTP API and the web page with uvicorn.

Listens on loopback by default. The API has no authentication, so another host (``0.0.0.0``,
a LAN address) prints a warning. Needs the ``[serve]`` extra: ``pip install -e '.[serve]'``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dalle.cli.common import non_negative_int, positive_float

if TYPE_CHECKING:
    from dalle.pipeline import DallePipeline


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: assume it may be reachable from elsewhere
        return False


def port_number(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def model_name(path: Path) -> str:
    """A short name for the model folder: its name, with the run's name for ``RUN/model``."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an HTTP API and a web page for generating images",
        description="Load MODEL once and serve the web page at / and the API under /v1 "
        "(schema at /openapi.json). Needs the [serve] extra.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (a run's model/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda")
    p.add_argument(
        "--queue-size",
        type=non_negative_int,
        default=8,
        help="requests that may wait behind the running one; more get 429",
    )
    p.add_argument(
        "--timeout", type=positive_float, default=120.0, help="seconds allowed per request"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="sample through torch.compile, compiled before serving (seconds to a minute; "
        "without a working compiler: a warning and the usual path)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def warm_up(pipe: DallePipeline) -> None:
    """Compile the decode step before the first request: one image and two (the compiled step
    has one graph for a single row and one for every larger batch)."""
    prompt = pipe.examples[0] if pipe.examples else "a picture"
    for n in (1, 2):
        pipe([prompt], num_images=n, seed=0, rerank=None)
    print(f"dalle serve: compiled the decode step in {pipe.compile_s:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from dalle.serve.app import create_app
    except ImportError as e:
        raise ValueError(
            f"serving needs the [serve] extra ({e}): pip install -e '.[serve]'"
        ) from None
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(args.model, device=args.device, compile=args.compile)
    if args.compile:
        warm_up(pipe)
    app = create_app(
        pipe, name=model_name(args.model), queue_size=args.queue_size, timeout_s=args.timeout
    )
    if not is_loopback(args.host):
        print(
            f"dalle serve: warning: listening on {args.host}, not loopback: anyone who can reach "
            "this address can use the API (it has no authentication)",
            file=sys.stderr,
        )
    print(f"dalle serve: {model_name(args.model)} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0

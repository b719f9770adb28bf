"""`pdserve router`: the OpenAI-compatible gateway in front of the prefill and decode workers."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator

import uvicorn

DEFAULT_REGISTRY = "redis://127.0.0.1:6379/0"
# Clients' idle connections stay open this long. Behind an ingress or load balancer (60 s idle
# timeouts are the common default) the proxy must let go first, or it may send a request on a
# connection the router is closing and answer 502.
KEEP_ALIVE_SECONDS = 75


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def _port(text: str) -> int:
    """An argparse type: a TCP port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port in 1..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdserve router",
        description=(
            "Serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) plus "
            "/health and /metrics, routing each request to a prefill and a decode worker found "
            "in the registry (or to a both-role worker). The router tokenizes and applies the "
            "chat template itself; it loads no weights. Secrets come from the environment: "
            "PDSERVE_INTERNAL_TOKEN (required; the same value the workers have) and "
            "PDSERVE_API_KEYS (optional, comma-separated client keys)."
        ),
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--registry",
        default=os.environ.get("PDSERVE_REGISTRY", DEFAULT_REGISTRY),
        help="worker registry: redis://HOST:PORT/DB (default $PDSERVE_REGISTRY or "
        f"{DEFAULT_REGISTRY})",
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="the model the workers serve, for its tokenizer and chat template: 'smollm2' "
        "(built in), a Hugging Face directory or a .gguf file",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="the name clients send as `model` (default: the --model value)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="bfloat16",
        help="accepted so routers and workers share one flag set; the router computes nothing",
    )
    p.add_argument(
        "--max-queued-requests",
        type=_positive(int),
        default=1024,
        help="requests this router serves at once; more get 429 with Retry-After (default 1024)",
    )
    p.add_argument(
        "--max-model-len",
        type=_positive(int),
        default=None,
        help="longest prompt + output in tokens (default: the model's context length)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="an API key clients must send as 'Authorization: Bearer KEY' (repeatable); keys "
        "also come from --api-key-file and $PDSERVE_API_KEYS (comma-separated); none = open",
    )
    p.add_argument("--api-key-file", default=None, help="file with one API key per line")
    p.add_argument(
        "--max-request-bytes",
        type=_positive(int),
        default=4 * 2**20,
        help="largest request body accepted; larger gets 413 (default 4 MiB)",
    )
    p.add_argument(
        "--block-size",
        type=_positive(int),
        default=16,
        help="the workers' KV block size, used to estimate load between reports (default 16)",
    )
    p.add_argument(
        "--connect-timeout", type=_positive(float), default=5.0, help="seconds to reach a worker"
    )
    p.add_argument(
        "--prefill-timeout",
        type=_positive(float),
        default=300.0,
        help="seconds to wait for a prefill answer before trying another worker (default 300)",
    )
    p.add_argument(
        "--stream-timeout",
        type=_positive(float),
        default=300.0,
        help="seconds a decode stream may stay silent before it counts as dead (default 300)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="log verbosity (default info)",
    )
    return p


class QuietExitServer(uvicorn.Server):
    """uvicorn's Server, minus re-raising SIGINT/SIGTERM after its graceful shutdown, so a
    requested stop exits 0 like every other pdserve process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s router %(levelname)s %(message)s"
    )
    from services.engine.errors import EngineError
    from services.internal_auth import MissingTokenError, internal_token_from_env
    from services.listen_socket import tcp_listener
    from services.registry import RegistryError, open_registry
    from services.router.api_keys import APIKeyError, APIKeys
    from services.router.app import Router, RouterConfig, create_app
    from services.router.worker_client import Timeouts

    config = RouterConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        max_model_len=args.max_model_len,
        max_queued_requests=args.max_queued_requests,
        max_body_bytes=args.max_request_bytes,
        block_size=args.block_size,
        timeouts=Timeouts(
            connect=args.connect_timeout,
            prefill=args.prefill_timeout,
            stream_idle=args.stream_timeout,
        ),
    )
    # Bind first: a taken port fails in a second, not after loading the tokenizer.
    try:
        listener = tcp_listener(args.host, args.port)
    except OSError as e:
        print(
            f"pdserve router: cannot listen on {args.host}:{args.port}: {e.strerror}",
            file=sys.stderr,
        )
        return 1
    try:
        api_keys = APIKeys.load(args.api_key, args.api_key_file)
        internal_token = internal_token_from_env()
        registry = open_registry(args.registry)
        print(f"pdserve router: loading the tokenizer of {args.model}", file=sys.stderr)
        router = Router(config, registry, api_keys, internal_token)
    except (APIKeyError, MissingTokenError, RegistryError, EngineError) as e:
        print(f"pdserve router: {e}", file=sys.stderr)
        return 2
    print(
        f"pdserve router: serving {config.name!r} on http://{args.host}:{args.port} "
        f"(registry {args.registry}, API keys {'on' if api_keys.enabled else 'off'})",
        file=sys.stderr,
    )
    server = QuietExitServer(
        uvicorn.Config(
            create_app(router),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    )
    server.run(sockets=[listener])
    return 0

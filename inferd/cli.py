"""`inferd serve|validate`: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from setproctitle import setproctitle

from inferd import __version__, logs
from inferd.config import Config, ServerConfig, load_config
from inferd.errors import EXIT_CONFIG, EXIT_LISTEN, EXIT_OK, ConfigError, ListenError
from inferd.placement import Host, WorkerSlot, plan
from inferd.sockets import Address, listen_all, raise_open_files_limit

if TYPE_CHECKING:
    from inferd.connections import Listener

log = logging.getLogger("inferd")

BACKLOG = 2048  # uvicorn's default: connections the kernel queues before inferd accepts them


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except ConfigError as error:
        print(f"inferd: invalid config\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as error:
        print(f"inferd: {error}", file=sys.stderr)
        return EXIT_LISTEN


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd", description="A multi-model inference daemon for PyTorch.")
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the models a config file declares")
    serve.add_argument("config", help="path to the YAML config")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(command=_serve)
    validate = commands.add_parser("validate", help="check a config file without serving")
    validate.add_argument("config", help="path to the YAML config")
    depth = validate.add_mutually_exclusive_group()
    depth.add_argument(
        "--schema-only",
        action="store_true",
        help="check the file's structure and values only, not this machine's CPUs, GPUs, model files and handlers",
    )
    depth.add_argument(
        "--load",
        action="store_true",
        help="also start each model in a child process as a worker would, and run its warmup on the declared shapes",
    )
    validate.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="the longest one model's check may take (default: 300 with --load, else 60)",
    )
    validate.set_defaults(command=_validate)
    reload = commands.add_parser("reload", help="make a running inferd re-read its config (like SIGHUP)")
    reload.add_argument("config", nargs="?", help="the running server's config, to find its address")
    reload.add_argument("--url", help="the server's base URL (default: from the config, else http://127.0.0.1:8080)")
    reload.set_defaults(command=_reload)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from inferd.validation import validate

    logs.configure("warning", "text")  # placement's warnings (CPUs shared, oversubscribed) still show
    config = validate(args.config, machine=not args.schema_only, load=args.load, timeout_s=args.timeout_s)
    checked = "; each loaded and warmed up" if args.load else ""
    print(f"{args.config}: OK ({len(config.models)} model(s){checked})")
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    from inferd.admin import request_reload

    url = args.url
    if url is None and args.config:
        server = load_config(args.config).server
        url = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    return request_reload(url or "http://127.0.0.1:8080")


def _serve(args: argparse.Namespace) -> int:
    config = _with_overrides(load_config(args.config), args)
    setproctitle("inferd: main")
    logs.configure(config.server.log_level, config.server.log_format)
    host = Host.detect()
    slots = plan(config, host)
    sockets = _listen(config.server)
    grpc_reservation = _reserve_grpc_port(config.server, sockets)
    _log_plan(host, slots)
    if slots:
        from inferd.process import start_fork_helper

        start_fork_helper()  # its torch import overlaps the rest of the start-up
    return _run_event_loop(_run(config, slots, args.config, sockets, grpc_reservation))


def _listen(settings: ServerConfig) -> list[socket.socket]:
    """Bind every port before any worker starts, so a port in use stops `serve` at once."""
    raise_open_files_limit(settings.max_connections)
    addresses = [Address(settings.host, settings.port, "server.port")]
    if settings.metrics_port is not None:
        addresses.append(Address(settings.host, settings.metrics_port, "server.metrics_port"))
    return listen_all(addresses, BACKLOG)


def _reserve_grpc_port(settings: ServerConfig, sockets: list[socket.socket]) -> socket.socket | None:
    """The gRPC port, held from now until the gRPC server binds it (inferd.protocols.grpc_server)."""
    if settings.grpc_port is None:
        return None
    from inferd.protocols.grpc_server import reserve

    try:
        return reserve(Address(settings.host, settings.grpc_port, "server.grpc_port"))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise


def _run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (about twice the requests per core), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))


def _with_overrides(config: Config, args: argparse.Namespace) -> Config:
    updates = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    return config.model_copy(update={"server": config.server.model_copy(update=updates)}) if updates else config


def _log_plan(host: Host, slots: list[WorkerSlot]) -> None:
    from inferd.cpuset import format_cpu_list

    log.info(
        "inferd %s: %d usable CPU(s) (%s), %d GPU(s)",
        __version__,
        len(host.cpus),
        format_cpu_list(host.cpus),
        host.gpu_count,
    )
    for slot in slots:
        log.info("plan: %s", slot.describe())


async def _run(
    config: Config,
    slots: list[WorkerSlot],
    config_path: str,
    sockets: list[socket.socket],
    grpc_reservation: socket.socket | None,
) -> int:
    from inferd.app import SecondaryServer, Server, build_app, metrics_app
    from inferd.connections import ConnectionLimits, Listener
    from inferd.daemon import Daemon

    daemon = Daemon(config, slots)
    settings = config.server
    separate_metrics = settings.metrics_port is not None
    limits = ConnectionLimits(settings.header_timeout_s, settings.max_header_bytes, settings.max_connections)
    listeners = [Listener(name, limits) for name in ("api", "metrics")[: len(sockets)]]
    daemon.metrics.watch_connections(listeners)

    async def reload() -> dict[str, object]:
        new_config = load_config(config_path)
        app.model_middleware.prepare(new_config)  # a middleware that cannot be built rejects the reload
        result = await daemon.reload(new_config, plan(new_config, Host.detect()))
        return dataclasses.asdict(result)

    server: Server
    app = build_app(daemon, lambda error: server.fail_startup(error), reload, metrics_route=not separate_metrics)
    uvicorn_config = _uvicorn_config(app, settings, listeners[0], settings.drain_timeout_s, "on")
    if grpc_reservation is None:
        server = Server(uvicorn_config)
    else:
        from inferd.protocols.grpc_server import GrpcFront, ServerBesideGrpc

        grpc_front = GrpcFront(daemon, app.access, grpc_reservation)
        server = ServerBesideGrpc(uvicorn_config, grpc_front)
        await grpc_front.start()
    server.on_reload = lambda: _reload_in_background(reload)
    if not separate_metrics:
        await server.serve(sockets=sockets)
        return server.exit_code
    metrics_server = SecondaryServer(_uvicorn_config(metrics_app(daemon), settings, listeners[1], 1.0, "off"))
    metrics_task = asyncio.create_task(metrics_server.serve(sockets=sockets[1:]))
    await server.serve(sockets=sockets[:1])
    metrics_server.should_exit = True
    await metrics_task
    return server.exit_code


def _reload_in_background(reload: Callable[[], Awaitable[object]]) -> None:
    from inferd.app import reload_logged

    async def run() -> None:
        with contextlib.suppress(ConfigError):  # reload_logged has logged why
            await reload_logged(reload, "SIGHUP")

    asyncio.get_running_loop().create_task(run())


def _uvicorn_config(
    app: object, settings: ServerConfig, listener: Listener, drain_s: float, lifespan: str
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=listener.protocol(),  # type: ignore[arg-type]
        ws="none",  # no WebSocket routes: an Upgrade request is answered as plain HTTP
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        backlog=BACKLOG,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(drain_s),
        server_header=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())

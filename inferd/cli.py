"""`inferd serve|validate`: the only place that turns errors into messages and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import uvicorn
from setproctitle import setproctitle

from inferd import __version__, logs
from inferd.config import Config, load_config
from inferd.errors import EXIT_CONFIG, EXIT_OK, ConfigError
from inferd.handler import model_file_problems
from inferd.placement import Host, WorkerSlot, plan

log = logging.getLogger("inferd")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except ConfigError as error:
        print(f"inferd: invalid config\n{error}", file=sys.stderr)
        return EXIT_CONFIG


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
    validate.add_argument(
        "--schema-only",
        action="store_true",
        help="check the file's structure and values only, not this machine's CPUs, GPUs and model files",
    )
    validate.set_defaults(command=_validate)
    reload = commands.add_parser("reload", help="make a running inferd re-read its config (like SIGHUP)")
    reload.add_argument("config", nargs="?", help="the running server's config, to find its address")
    reload.add_argument("--url", help="the server's base URL (default: from the config, else http://127.0.0.1:8080)")
    reload.set_defaults(command=_reload)
    return parser


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not args.schema_only:
        plan(config, Host.detect())
        problems = model_file_problems(config)
        if problems:
            raise ConfigError(config.source, problems)
    print(f"{args.config}: OK ({len(config.models)} model(s))")
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
    _log_plan(host, slots)
    return _run_event_loop(_run(config, slots, args.config))


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


async def _run(config: Config, slots: list[WorkerSlot], config_path: str) -> int:
    from inferd.app import SecondaryServer, Server, build_app, metrics_app
    from inferd.daemon import Daemon

    daemon = Daemon(config, slots)
    settings = config.server
    separate_metrics = settings.metrics_port is not None

    async def reload() -> dict[str, object]:
        new_config = load_config(config_path)
        result = await daemon.reload(new_config, plan(new_config, Host.detect()))
        return dataclasses.asdict(result)

    server: Server
    app = build_app(daemon, lambda error: server.fail_startup(error), reload, metrics_route=not separate_metrics)
    if settings.auth is not None:
        from inferd.auth import ApiKeyAuth, load_api_keys

        app = ApiKeyAuth(app, load_api_keys(settings.auth, config.source), settings.auth)  # type: ignore[assignment]
    server = Server(_uvicorn_config(app, settings.host, settings.port, settings.drain_timeout_s, "on"))
    server.on_reload = lambda: _reload_in_background(reload)
    if not separate_metrics:
        await server.serve()
        return server.exit_code
    metrics_server = SecondaryServer(
        _uvicorn_config(metrics_app(daemon), settings.host, settings.metrics_port, 1.0, "off")
    )
    metrics_task = asyncio.create_task(metrics_server.serve())
    await server.serve()
    metrics_server.should_exit = True
    await metrics_task
    return server.exit_code


def _reload_in_background(reload: Callable[[], Awaitable[object]]) -> None:
    async def run() -> None:
        log.info("SIGHUP: reloading the config")
        try:
            await reload()
        except ConfigError as error:
            log.error("reload rejected; the old config keeps serving:\n%s", error)

    asyncio.get_running_loop().create_task(run())


def _uvicorn_config(app: object, host: str, port: int | None, drain_s: float, lifespan: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port or 0,
        lifespan=lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(drain_s),
        server_header=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())

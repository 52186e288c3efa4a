"""The gRPC server beside uvicorn: grpcio's asyncio server on `server.grpc_port`, serving
`inference.GRPCInferenceService` (inferd.protocols.grpc_service).

The port is reserved before any worker starts, like the HTTP ports (inferd.sockets): a socket
bound with SO_REUSEPORT, never listening, holds it against other processes until grpcio (which
binds with SO_REUSEPORT too, in this process) has bound it; then the reservation is closed.
grpcio cannot take a socket bound by someone else, so this is how a taken port still stops
`inferd serve` at once with a message naming it. Draining stops new calls and gives calls in
flight `drain_timeout_s`. The inference calls read and write their tensors with grpc_wire.py
rather than protobuf's own (de)serializers, which copy each tensor twice more.
"""

from __future__ import annotations

import logging
import socket

import grpc
import uvicorn

from inferd.app import Server
from inferd.auth import Access
from inferd.daemon import Daemon
from inferd.errors import ListenError
from inferd.protocols.grpc_pb import grpc_service_pb2_grpc as pb_grpc
from inferd.protocols.grpc_service import InferenceService
from inferd.protocols.grpc_wire import parse_infer_call, serialize_infer_reply
from inferd.sockets import Address, _reason

log = logging.getLogger(__name__)


def reserve(address: Address) -> socket.socket:
    """A bound, unlistened socket holding `address`'s port until the gRPC server binds it."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # lets grpcio bind beside it
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {address} ({address.config_key}): {_reason(error, address)}") from None
    return sock


class _Handlers:
    """Takes the generated code's method handlers in place of a server, so that some can be changed."""

    def __init__(self) -> None:
        self.service = ""
        self.by_method: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.by_method = service, dict(handlers)


def add_service(servicer: InferenceService, server: grpc.aio.Server) -> None:
    handlers = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, handlers)
    methods = handlers.by_method
    methods["ModelInfer"] = methods["ModelInfer"]._replace(  # type: ignore[attr-defined]
        request_deserializer=parse_infer_call, response_serializer=serialize_infer_reply
    )
    methods["ModelStreamInfer"] = methods["ModelStreamInfer"]._replace(  # type: ignore[attr-defined]
        request_deserializer=parse_infer_call
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(handlers.service, methods),))
    server.add_registered_method_handlers(handlers.service, methods)  # type: ignore[attr-defined]


class GrpcFront:
    def __init__(self, daemon: Daemon, access: Access, reservation: socket.socket) -> None:
        settings = daemon.config.server
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1),
            ]
        )
        add_service(InferenceService(daemon, access), self.server)
        self._reservation = reservation
        self._address = Address(settings.host, reservation.getsockname()[1], "server.grpc_port")

    async def start(self) -> None:
        try:
            bound = self.server.add_insecure_port(str(self._address))
        except RuntimeError as error:
            bound = 0
            log.debug("grpc bind: %s", error)
        finally:
            self._reservation.close()
        if not bound:
            raise ListenError(f"cannot listen on {self._address} (server.grpc_port): the gRPC server could not bind it")
        await self.server.start()
        log.info("listening on grpc://%s (server.grpc_port)", self._address)

    async def stop(self, drain_s: float) -> None:
        await self.server.stop(drain_s)


class ServerBesideGrpc(Server):
    """The HTTP server, which drains the gRPC server first when it drains (before the workers stop)."""

    def __init__(self, config: uvicorn.Config, grpc_front: GrpcFront) -> None:
        super().__init__(config)
        self.grpc_front = grpc_front

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.grpc_front.stop(self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)

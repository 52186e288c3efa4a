"""Triton's `inference.GRPCInferenceService` over the daemon: the gRPC twin of the v2 REST routes.

Each call is checked the way its REST twin is (the same API keys, read from the call's metadata
`authorization: Bearer <key>` or `x-api-key`; ServerLive and ServerReady open unless
`protect_health`), then goes to the same batcher; a ModelInfer counts in its model's request
metrics under the HTTP status its outcome has over REST, after the same rate limits (a refusal
is UNAVAILABLE with `retry-after` in the trailing metadata) and with the same priorities (the
request's `priority` parameter, else `x-priority` metadata). A call's gRPC deadline bounds its wait
for the model (DEADLINE_EXCEEDED, and the request leaves the queue); a cancelled call leaves the
queue too. A RequestError becomes the gRPC status Triton gives for it (`STATUS_CODES`), with one
log line; RPCs without an HTTP twin in inferd answer UNIMPLEMENTED. The repository calls (index, load,
unload) are admin calls: grpc_admin.py says who may make them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc.aio import ServicerContext as Context

from inferd import __version__
from inferd.admission import payload_bytes
from inferd.auth import Access
from inferd.daemon import Daemon, ServedModel
from inferd.errors import BadRequest, ClientGone, ModelNotFound, RequestError, RequestTimedOut, Unauthorized
from inferd.messages import Payload
from inferd.priority import header_priority, request_priority
from inferd.protocols import grpc_codec, grpc_generate, grpc_wire, repository, v2
from inferd.protocols.grpc_admin import check_admin_call
from inferd.protocols.grpc_pb import grpc_service_pb2 as pb
from inferd.protocols.grpc_pb import grpc_service_pb2_grpc as pb_grpc
from inferd.protocols.grpc_pb import model_config_pb2
from inferd.protocols.grpc_wire import InferCall, InferReply
from inferd.protocols.http import QUIET_STATUSES
from inferd.protocols.shm import RegionExists
from inferd.protocols.v2_codec import V2DecodeError
from inferd.protocols.v2_stats import statistics
from inferd.request_note import NOTE, VARIANT_HEADER, RequestNote
from inferd.versions import public_names

log = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP status of a RequestError -> the gRPC code Triton answers for the same fault.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: RequestError) -> grpc.StatusCode:
    if isinstance(error, RegionExists):
        return grpc.StatusCode.ALREADY_EXISTS
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


async def _abort(context: Context, rpc: str, error: RequestError) -> None:
    code = status_code(error)
    level = logging.DEBUG if error.status in QUIET_STATUSES else logging.INFO if error.status < 500 else logging.ERROR
    if error.detail:  # a model raised: its traceback is for the operator, never for the caller
        log.log(max(level, logging.WARNING), "grpc %s: %s: %s; traceback: %s",
                rpc, code.name, error.message, error.detail.rstrip())  # fmt: skip
    else:
        log.log(level, "grpc %s: %s: %s", rpc, code.name, error.message)
    if "Retry-After" in error.headers:
        context.set_trailing_metadata((("retry-after", error.headers["Retry-After"]),))
    try:
        await context.abort(code, error.message)
    except grpc.aio.AbortError:
        raise
    except Exception:
        if not _call_over(context):
            raise
        # The call ended first (its deadline passed as ours did, or the client left), so no status
        # can go out: a cancelled handler is one debug line of grpc's, not a traceback.
        raise asyncio.CancelledError from None


def _call_over(context: Context) -> bool:
    remaining_s = context.time_remaining()
    return bool(context.done() or (remaining_s is not None and remaining_s <= 0))


def _one_line(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(error).__name__}: {error} (at {where})"


def _unimplemented(rpc: str, instead: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: InferenceService, request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"inferd does not serve {rpc}; {instead}")

    return refuse


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, daemon: Daemon, access: Access) -> None:
        self._daemon = daemon
        self._access = access
        self._open_health = "/v2/health/live" in access.open_paths

    async def _guarded(
        self, rpc: str, context: Context, work: Callable[[], Awaitable[T]], health: bool = False, admin: bool = False
    ) -> T:
        try:
            if admin:
                check_admin_call(self._access, _metadata(context), context.peer())
            else:
                self._authorize(context, health)
            return await work()
        except RequestError as error:
            await _abort(context, rpc, error)
            raise  # abort raised already; this satisfies the type checker
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:  # a bug of ours: INTERNAL with a reason, one log line, keep serving
            log.error("grpc %s: internal error: %s", rpc, _one_line(error))
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
            raise

    def _authorize(self, context: Context, health: bool) -> None:
        if not self._access.api_keys or (health and self._open_health):
            return
        if self._key_name(context) is None:
            raise Unauthorized("missing or wrong API key: send the metadata 'authorization: Bearer <key>'")

    def _key_name(self, context: Context) -> str | None:
        if not self._access.api_keys:
            return None
        return self._access.key_name(_metadata(context))

    def _find(self, name: str, version: str) -> ServedModel:
        model = self._daemon.find(name, version)
        if model is not None:
            return model
        if self._daemon.find(name) is None:
            raise ModelNotFound(f"no model named {name!r}; models: {public_names(self._daemon.models)}")
        versions = self._daemon.versions.versions_of(name)
        raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: {versions}")

    # ---- health and metadata ----------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        async def live() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._guarded("ServerLive", context, live, health=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        async def ready() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self._daemon.ready)

        return await self._guarded("ServerReady", context, ready, health=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def ready() -> pb.ModelReadyResponse:
            model = self._daemon.find(request.name, request.version)
            return pb.ModelReadyResponse(ready=bool(model and model.workers.ready_count))

        return await self._guarded("ModelReady", context, ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        async def metadata() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="inferd", version=__version__, extensions=v2.EXTENSIONS)

        return await self._guarded("ServerMetadata", context, metadata)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        async def metadata() -> pb.ModelMetadataResponse:
            model = self._find(request.name, request.version)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=model.public_name,
                versions=self._daemon.versions.versions_of(model.public_name),
                platform=model.platform,
                inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.inputs],
                outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in model.outputs],
            )

        return await self._guarded("ModelMetadata", context, metadata)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        async def config() -> pb.ModelConfigResponse:
            model = self._find(request.name, request.version)
            document = json_format.ParseDict(v2.config_document(model), model_config_pb2.ModelConfig())
            return pb.ModelConfigResponse(config=document)

        return await self._guarded("ModelConfig", context, config)

    # ---- inference --------------------------------------------------------------------------

    async def ModelInfer(self, request: InferCall, context: Context) -> InferReply:
        return await self._guarded("ModelInfer", context, lambda: self._counted(request, context, unary=True))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[InferCall], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One answer per request, in order (a generative model's: one per generated chunk, see
        grpc_generate.py); a failed request answers its error and the stream goes on."""
        try:
            self._authorize(context, health=False)
        except RequestError as error:
            await _abort(context, "ModelStreamInfer", error)
        async for request in requests:
            async for response in self._stream_answers(request, context):
                yield response

    async def _stream_answers(self, request: InferCall, context: Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            model = self._find(request.message.model_name, request.message.model_version)
            if model.generator is not None:
                async for response in self._generated(model, request):
                    yield response
            else:
                reply = await self._counted(request, context)
                yield pb.ModelStreamInferResponse(infer_response=grpc_wire.infer_response(reply))
        except RequestError as error:
            log.info("grpc ModelStreamInfer: %s: %s", status_code(error).name, error.message)
            yield pb.ModelStreamInferResponse(error_message=error.message)
        except Exception as error:  # a bug of ours: answered, logged in one line, and the stream goes on
            log.error("grpc ModelStreamInfer: internal error: %s", _one_line(error))
            yield pb.ModelStreamInferResponse(error_message="internal server error; see the server log")

    async def _generated(self, model: ServedModel, request: InferCall) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """A generative model's chunks, the request counted in its metrics with its REST status."""
        started, status = time.perf_counter(), 200
        try:
            async for response in grpc_generate.generate(model, request, self._daemon.shared_memory):
                yield response
        except RequestError as error:
            status = error.status
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = ClientGone.status
            raise
        finally:
            model.metrics.request_done("grpc", status, time.perf_counter() - started)

    async def _counted(self, request: InferCall, context: Context, unary: bool = False) -> InferReply:
        """The answer, counted in the model's request metrics with its REST status; a unary call
        names a traffic split's answering variant in its trailing metadata."""
        started = time.perf_counter()
        model = self._find(request.message.model_name, request.message.model_version)
        status = 200
        note = RequestNote(_metadata(context))
        token = NOTE.set(note)
        try:
            self._daemon.rate_limits.admit(self._key_name(context), model.config)
            response = await self._infer(model, request, context)
            if unary and note.variant is not None:
                context.set_trailing_metadata(((VARIANT_HEADER, note.variant),))
            return response
        except RequestError as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            status = ClientGone.status
            raise
        finally:
            NOTE.reset(token)
            model.metrics.request_done("grpc", status, time.perf_counter() - started)

    async def _infer(self, model: ServedModel, message: InferCall, context: Context) -> InferReply:
        regions = self._daemon.shared_memory
        with self._daemon.admission.hold(model.name, model.config.request_bytes_fraction) as held:
            # The message is in memory already (grpcio parsed it); what the decoded inputs hold is
            # counted, as ByteSize() would serialize the whole message again to tell.
            request, targets = grpc_codec.decode_infer_request(message, regions)
            held.grow(payload_bytes(request.inputs.values(), b""))
            if model.outputs:
                _check(request.check_requested_outputs, [o.name for o in model.outputs])
            payload, items, key = v2.to_payload(model, request)
            priority = request_priority(request.parameters, model.config, _metadata_priority(model, context))
            infer = model.batcher.infer(payload, items, key, priority)
            result = await _within_deadline(infer, context.time_remaining())
            outputs = v2.handler_outputs(model, result) if isinstance(result, list) else result
            selected, _ = _check(request.select_outputs, outputs)
            datatypes = {spec.name: spec.datatype for spec in model.outputs}
            return grpc_codec.encode_infer_response(
                model.public_name, model.version, request.id, selected, datatypes, targets, regions
            )

    # ---- statistics -------------------------------------------------------------------------

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        """Triton's statistics of one model (or all, when no name is given), as GET .../stats gives them."""

        async def stats() -> pb.ModelStatisticsResponse:
            named = [self._find(request.name, request.version)] if request.name else None
            models = named or list(self._daemon.models.values())
            document = statistics((model.public_name, model.version, model.metrics.tally) for model in models)
            return json_format.ParseDict(document, pb.ModelStatisticsResponse())

        return await self._guarded("ModelStatistics", context, stats)

    # ---- system shared memory ---------------------------------------------------------------

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        async def status() -> pb.SystemSharedMemoryStatusResponse:
            response = pb.SystemSharedMemoryStatusResponse()
            for region in self._daemon.shared_memory.status(request.name or None):
                response.regions[str(region["name"])].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)  # type: ignore[arg-type]
                )
            return response

        return await self._guarded("SystemSharedMemoryStatus", context, status)

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        async def register() -> pb.SystemSharedMemoryRegisterResponse:
            self._daemon.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await self._guarded("SystemSharedMemoryRegister", context, register)

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        async def unregister() -> pb.SystemSharedMemoryUnregisterResponse:
            self._daemon.shared_memory.unregister(request.name or None)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await self._guarded("SystemSharedMemoryUnregister", context, unregister)

    # ---- model repository (admin calls) -----------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        async def listing() -> pb.RepositoryIndexResponse:
            entries = repository.index(self._daemon, request.ready)
            model_index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(models=[model_index(**asdict(entry)) for entry in entries])

        return await self._guarded("RepositoryIndex", context, listing, admin=True)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        async def load() -> pb.RepositoryModelLoadResponse:
            await repository.load(self._daemon, request.model_name, dict(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await self._guarded("RepositoryModelLoad", context, load, admin=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def unload() -> pb.RepositoryModelUnloadResponse:
            await repository.unload(self._daemon, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._guarded("RepositoryModelUnload", context, unload, admin=True)

    # ---- not served -------------------------------------------------------------------------

    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory", "use system shared memory")
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory", "use system shared memory")
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory", "use system shared memory")
    TraceSetting = _unimplemented("TraceSetting", "inferd has no tracing")
    LogSettings = _unimplemented("LogSettings", "set server.log_level in the config")


def _metadata_priority(model: ServedModel, context: Context) -> int:
    metadata = {str(k).lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return header_priority(metadata, model.config)


async def _within_deadline(work: Awaitable[Payload], remaining_s: float | None) -> Payload:
    if remaining_s is None:
        return await work
    try:
        return await asyncio.wait_for(work, max(remaining_s, 0.0))
    except asyncio.TimeoutError:
        raise RequestTimedOut("the call's deadline (its gRPC timeout) passed before the model answered") from None


def _check(check: Callable[[Any], T], argument: Any) -> T:
    try:
        return check(argument)
    except V2DecodeError as error:
        raise BadRequest(str(error)) from None


def _metadata(context: Context) -> list[tuple[bytes, bytes]]:
    """The call's metadata as HTTP-like header pairs (gRPC's keys are lower case already)."""
    return [(str(k).encode(), v if isinstance(v, bytes) else str(v).encode())
            for k, v in context.invocation_metadata() or ()]  # fmt: skip

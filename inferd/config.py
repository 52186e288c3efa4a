"""YAML -> a validated, frozen config tree. Nothing else in inferd reads YAML.

`load_config` is pure: it reads one file and returns a `Config` or raises `ConfigError` listing every
problem at once, each named by its YAML path (`models[1].max_batch_size`). Each model entry is
checked on its own, and rules that join fields or entries (exactly one of path or handler, unique
names and routes) read the YAML as written, so no problem hides another; `check_config` also answers
the entries that passed, for `inferd validate` to check further. Checks that need the machine
(which CPUs and GPUs exist, model files, handler classes) live in `placement.py`, `handler.py` and
`validation.py`.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferd.cpuset import parse_cpu_list
from inferd.errors import ConfigError
from inferd.pipeline_graph import PIPELINE_INPUT, pipeline_entry_problems, pipeline_problems
from inferd.pool_config import PoolConfig, pool_entry_problems, pool_problems
from inferd.priority import priority_problems
from inferd.split_graph import split_entry_problems, split_problems
from inferd.versions import inherited_error, plain_entry_problems, version_entry_problems, with_inherited_versions

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip

# Latency buckets from 0.5 ms to 30 s: inference spans sub-millisecond MLPs to multi-second batches.
DEFAULT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Paths the server's own routes hold: a model's route may not take them.
SERVICE_PATHS = frozenset({"/models", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v2", "/", "/status.json"})
RESERVED_PREFIXES = ("/v2/", "/admin/", "/v1/")  # /v1/: the OpenAI-compatible routes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_ENTRY = re.compile(r"^models\[(\d+)\]")
_INTERNAL_WORDS = re.compile(r" or instance of \w+")  # pydantic's class names mean nothing in a YAML file


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuthConfig(_Section):
    """Keys come from an environment variable or a file, never from the YAML itself. API keys open
    the model and service routes; admin keys open the admin routes, from any address."""

    api_keys_env: str | None = None
    api_keys_file: Path | None = None
    admin_keys_env: str | None = None
    admin_keys_file: Path | None = None
    protect_health: bool = False
    protect_metrics: bool = False

    @model_validator(mode="after")
    def _has_a_source(self) -> AuthConfig:
        if not (self.api_keys_env or self.api_keys_file or self.admin_keys_env or self.admin_keys_file):
            raise ValueError(
                "give api_keys_env (a variable's name) or api_keys_file (a path), and/or "
                "admin_keys_env or admin_keys_file for the admin routes"
            )
        return self


class RateLimit(_Section):
    """A token bucket: `burst` requests at once, refilled at `requests_per_s` (inferd/rate_limit.py)."""

    requests_per_s: float = Field(gt=0)
    burst: int | None = Field(None, ge=1)  # None: requests_per_s rounded up

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.requests_per_s))


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535)  # KServe v2 gRPC (Triton's service); off unless set
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_request_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # Request bodies and decoded payloads held in the main process at once (receiving, decoding,
    # queued, in flight); past it requests get 429. 1 GiB: 64 bodies of the largest default size.
    max_request_bytes_held: int = Field(1024**3, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    body_timeout_s: float = Field(30.0, gt=0)  # a client slower than this to send its body gets 408
    # The connection layer (inferd/connections.py): what one client may hold of the main process.
    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive within this, else 408
    keepalive_timeout_s: float = Field(75.0, gt=0)  # an idle connection between requests closes after this
    max_connections: int = Field(2048, ge=1)  # open connections; past it a new one gets 503 at once
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line and headers; past it 431
    histogram_buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S
    auth: AuthConfig | None = None
    admin_hosts: tuple[str, ...] = ()  # Host names admin requests may carry besides loopback and `host`
    middleware: tuple[MiddlewareSpec, ...] = ()  # around every HTTP request, the first outermost
    pool: PoolConfig = Field(default_factory=PoolConfig)  # type: ignore[arg-type]  # see pool_config.py
    # Each API key's own bucket, by the key's name; "*" for every key not named.
    key_rate_limits: dict[str, RateLimit] = Field(default_factory=dict)

    @field_validator("key_rate_limits")
    @classmethod
    def _limits_name_keys(cls, limits: dict[str, RateLimit]) -> dict[str, RateLimit]:
        for name in limits:
            if name != "*" and not _NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a key's name (letters, digits, '_', '.', '-'), nor '*' for every key"
                )
        return limits

    @model_validator(mode="after")
    def _key_limits_need_keys(self) -> ServerConfig:
        has_keys = self.auth is not None and (self.auth.api_keys_env or self.auth.api_keys_file)
        if self.key_rate_limits and not has_keys:
            raise ValueError(
                "key_rate_limits are per API key: give server.auth.api_keys_env or api_keys_file, "
                "or set a model's rate_limit instead"
            )
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> ServerConfig:
        if self.max_request_bytes_held < self.max_request_bytes:
            raise ValueError(
                f"max_request_bytes_held ({self.max_request_bytes_held}) must be at least max_request_bytes "
                f"({self.max_request_bytes}), or the largest allowed body could never be admitted"
            )
        return self

    @model_validator(mode="after")
    def _grpc_port_is_its_own(self) -> ServerConfig:
        if self.grpc_port and self.grpc_port in (self.port, self.metrics_port):
            other = "port" if self.grpc_port == self.port else "metrics_port"
            raise ValueError(f"grpc_port ({self.grpc_port}) must differ from {other}: gRPC needs a port of its own")
        return self

    @field_validator("histogram_buckets_s")
    @classmethod
    def _buckets_increase(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or any(b <= a for a, b in itertools.pairwise(buckets)) or buckets[0] <= 0:
            raise ValueError("buckets must be positive and strictly increasing")
        return buckets


class MiddlewareSpec(_Section):
    """One ASGI middleware, built once as `Class(app, **args)` (Starlette's convention); `class` is
    `package.module:Class` or `file.py:Class` (relative to the config file). A bare string is the class."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    factory: str = Field(alias="class")
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _class_alone(cls, value: Any) -> Any:
        return {"class": value} if isinstance(value, str) else value

    @field_validator("factory")
    @classmethod
    def _import_form(cls, factory: str) -> str:
        module, colon, attr = factory.rpartition(":")
        if not (colon and module and attr.isidentifier()):
            raise ValueError("expected 'package.module:Class' or 'file.py:Class'")
        return factory


class TensorSpec(_Section):
    """One named input or output; `shape` includes the batch dimension, -1 where it varies."""

    name: str
    datatype: Datatype = "FP32"
    shape: tuple[int, ...] = (-1,)
    label_filename: Path | None = None  # an output's class names, one a line (Triton's classification)
    format: Literal["FORMAT_NCHW", "FORMAT_NHWC"] | None = None  # an image input's layout, for Triton's clients

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            raise ValueError("shape needs at least the batch dimension, e.g. [-1, 16]")
        if any(dim == 0 or dim < -1 for dim in shape):
            raise ValueError("each dimension is a positive size or -1 (variable)")
        return shape


class WarmupSample(_Section):
    """One warmup request: literal `inputs` as a native request gives them, or `zeros` of shapes."""

    inputs: Any = None
    zeros: dict[str, tuple[int, ...]] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> WarmupSample:
        if (self.inputs is None) == (self.zeros is None):
            raise ValueError("give exactly one of 'inputs' or 'zeros'")
        return self


class PipelineStep(_Section):
    """One step of a pipeline: the model it submits to, its id among the steps (default: the
    model's name) and the steps whose outputs it takes (default: the step before it; "input" is
    the request itself). Several steps after one fan out; a step after several joins their outputs
    by name."""

    model: str
    id: str | None = None
    after: tuple[str, ...] | None = None

    @field_validator("after", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class GenerationConfig(_Section):
    """A generative model's limits, checked before any compute: a request over a cap gets a 400."""

    max_prompt_tokens: int = Field(2048, ge=1)
    max_tokens: int = Field(512, ge=1)  # the most new tokens one request may ask for
    default_max_tokens: int = Field(128, ge=1)  # where a request names none
    # Newcomers are prefilled in passes of at most this many prompt tokens (a longer prompt alone),
    # each pass's first tokens sent before the next: the first ones need not wait for all of them.
    prefill_tokens_per_pass: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _default_within_cap(self) -> GenerationConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be at most max_tokens ({self.max_tokens})"
            )
        return self


def _version_text(value: Any) -> Any:
    """YAML reads `version: 2` as a number; a version is a name."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SplitVariant(_Section):
    """One variant of a traffic split: a model of this config (one version of it, or its default)."""

    model: str
    version: str | None = None
    weight: float = Field(ge=0)

    _version_is_text = field_validator("version", mode="before")(_version_text)

    @property
    def label(self) -> str:
        """How series, logs and the X-Inferd-Variant header name this variant."""
        return self.model if self.version is None else f"{self.model}@{self.version}"


class ShadowConfig(_Section):
    """A candidate that gets a copy of `share` of a split's requests; its answers are discarded."""

    model: str
    version: str | None = None
    share: float = Field(1.0, gt=0, le=1)
    # Copies waiting or running at once; past it (or with a full batch queued at the candidate)
    # a copy is dropped, never queued. Default: the candidate's max_batch_size per worker, twice.
    max_inflight: int | None = Field(None, ge=1)

    _version_is_text = field_validator("version", mode="before")(_version_text)

    @property
    def label(self) -> str:
        return self.model if self.version is None else f"{self.model}@{self.version}"


class SplitConfig(_Section):
    """A route whose requests go to several models or versions by weight (inferd/traffic_split.py)."""

    variants: tuple[SplitVariant, ...]
    key_header: str | None = None  # requests with the same value of this header go to the same variant
    shadow: ShadowConfig | None = None

    @field_validator("key_header")
    @classmethod
    def _header_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise ValueError("expected an HTTP header name, e.g. X-User-Id")
        return name


class ModelConfig(_Section):
    name: str
    route: str | None = None
    path: Path | None = None
    handler: str | None = None
    handler_args: dict[str, Any] = Field(default_factory=dict)
    device: str = "cpu"
    gpus: tuple[int, ...] | None = None
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    workers_per_device: int = Field(1, ge=1, le=256)
    max_batch_size: int = Field(1, ge=1, le=65536)
    batch_timeout_ms: float | None = Field(None, ge=0, le=60_000)  # a cap on the learned hold; 0 never holds
    batch_wait: Literal["adaptive", "fixed"] = "adaptive"  # fixed: every partial batch waits batch_timeout_ms
    # How long a worker polls for its next batch, and the main process for a batch's answer,
    # before sleeping (inferd/busy_poll.py); 0 never polls.
    busy_poll_us: float = Field(1000.0, ge=0, le=100_000)
    cpu_affinity: tuple[int, ...] | None = None
    max_queue_size: int = Field(1024, ge=1)
    request_timeout_ms: float = Field(30_000.0, gt=0)
    # The share of server.max_request_bytes_held this model's requests may hold: a flood on one
    # model leaves the rest to the others.
    request_bytes_fraction: float = Field(0.5, gt=0, le=1)
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    warmup: tuple[WarmupSample, ...] = ()
    warmup_runs: int = Field(1, ge=1, le=1000)
    max_worker_memory_mb: int | None = Field(None, ge=1)  # MiB of RSS; past it a worker is replaced
    # Batches one worker holds at once: above 1 only for a handler whose predict is `async def`.
    max_concurrency: int = Field(1, ge=1, le=1024)
    middleware: tuple[MiddlewareSpec, ...] = ()  # around this model's HTTP routes only
    # Models of this config run in turn (or as a small graph) on one request; see inferd/pipeline.py.
    pipeline: tuple[PipelineStep, ...] | None = None
    # eager: workers start with the server; lazy: on the first request (inferd/model_pool.py).
    load: Literal["eager", "lazy"] = "eager"
    idle_unload_s: float | None = Field(None, gt=0)  # a lazy model with no request this long is unloaded

    @field_validator("pipeline", mode="before")
    @classmethod
    def _steps_from_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": step} if isinstance(step, str) else step for step in value]
        return value

    @field_validator("pipeline")
    @classmethod
    def _steps_linked(cls, steps: tuple[PipelineStep, ...] | None) -> tuple[PipelineStep, ...] | None:
        """Every step with its id and `after` written out: a chain unless the YAML says otherwise."""
        if steps is None:
            return None
        if not steps:
            raise ValueError("a pipeline lists at least one step, e.g. [decode, network, top5]")
        linked: list[PipelineStep] = []
        for step in steps:
            after = step.after if step.after is not None else (str(linked[-1].id) if linked else PIPELINE_INPUT,)
            linked.append(PipelineStep(model=step.model, id=step.id or step.model, after=after))
        return tuple(linked)

    # A generative model: its handler is a GenerativeHandler; max_batch_size sequences run together.
    generation: GenerationConfig | None = None
    # Versions, each its own file or handler, inheriting every other key (inferd/versions.py).
    versions: tuple[ModelConfig, ...] | None = None
    default_version: str | None = None  # default: the highest
    version: str | None = None  # set within an entry of `versions`
    split: SplitConfig | None = None  # traffic to other models by weight (inferd/traffic_split.py)

    _inherit = model_validator(mode="before")(with_inherited_versions)
    _version_is_text = field_validator("version", "default_version", mode="before")(_version_text)

    @field_validator("version", "default_version")
    @classmethod
    def _version_name(cls, version: str | None) -> str | None:
        if version is not None and not _NAME.match(version):
            raise ValueError("a version is a name of letters, digits, '_', '.', '-' (e.g. '2')")
        return version

    # Priorities as Triton numbers them (inferd/priority.py): 1 is the highest, 0 or none is the default.
    priority_levels: int = Field(3, ge=1, le=100)
    default_priority_level: int = Field(2, ge=1, le=100)
    priority_promote_after_ms: float | None = Field(None, gt=0)  # None: half of request_timeout_ms, at most 1 s
    rate_limit: RateLimit | None = None  # the model's own bucket, whoever calls

    @field_validator("name")
    @classmethod
    def _name_is_route_safe(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("use letters, digits, '_', '.', '-' (at most 64, starting alphanumeric)")
        return name

    @field_validator("route")
    @classmethod
    def _route_is_path(cls, route: str | None) -> str | None:
        if route is not None and (not route.startswith("/") or "{" in route or " " in route):
            raise ValueError("a route is an absolute URL path like '/embed', without '{' or spaces")
        if route is not None and (route in SERVICE_PATHS or route.startswith(RESERVED_PREFIXES)):
            raise ValueError(f"the server's own routes take {sorted(SERVICE_PATHS)} and paths under /v2, /admin/, /v1/")
        return route

    @field_validator("device")
    @classmethod
    def _device_known(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError("expected 'cpu', 'cuda' or 'cuda:N'")
        return device

    @field_validator("handler")
    @classmethod
    def _handler_form(cls, handler: str | None) -> str | None:
        if handler is not None:
            module, colon, attr = handler.rpartition(":")
            if not (colon and module and attr.isidentifier()):
                raise ValueError("expected 'package.module:Class' or 'file.py:Class'")
        return handler

    @field_validator("cpu_affinity", mode="before")
    @classmethod
    def _parse_cpu_set(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):
            return parse_cpu_list(value)
        return value

    @field_validator("cpu_affinity")
    @classmethod
    def _cpu_set_valid(cls, cpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if cpus is not None:
            if not cpus or min(cpus) < 0:
                raise ValueError("a CPU set lists one or more CPU numbers (0 or more)")
            if len(set(cpus)) != len(cpus):
                raise ValueError("a CPU is listed twice")
        return cpus

    @property
    def url_path(self) -> str:
        return self.route or f"/models/{self.name}/predict"

    @property
    def device_names(self) -> tuple[str, ...]:
        """The devices this model's workers use, before the machine's GPUs are known for 'cuda'."""
        if self.device == "cuda" and self.gpus is not None:
            return tuple(f"cuda:{gpu}" for gpu in self.gpus)
        return (self.device,)


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    models: tuple[ModelConfig, ...]
    source: str = Field("<config>", exclude=True)


@dataclass(frozen=True)
class ConfigCheck:
    """What `check_config` made of a file: every problem, and each model entry that passed its own
    checks (by its index in the YAML), so that later checks can go on with those models."""

    source: str
    problems: tuple[str, ...] = ()
    models: tuple[tuple[int, ModelConfig], ...] = ()
    config: Config | None = None  # only when there is no problem


# Which section a key belongs to, by the nearest named parent in its YAML path.
_SECTIONS: dict[str | None, type[BaseModel]] = {
    None: Config, "server": ServerConfig, "auth": AuthConfig, "models": ModelConfig,
    "inputs": TensorSpec, "outputs": TensorSpec, "warmup": WarmupSample, "pipeline": PipelineStep,
    "generation": GenerationConfig, "rate_limit": RateLimit, "middleware": MiddlewareSpec, "pool": PoolConfig,
    "versions": ModelConfig, "split": SplitConfig, "variants": SplitVariant, "shadow": ShadowConfig,
}  # fmt: skip


def load_config(path: str | Path) -> Config:
    """Read and validate one YAML config; relative model paths resolve against its folder."""
    return _config_or_raise(check_config(path))


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    return _config_or_raise(check_config_text(text, source, base_dir))


def _config_or_raise(check: ConfigCheck) -> Config:
    if check.config is None:
        raise ConfigError(check.source, list(check.problems))
    return check.config


def check_config(path: str | Path) -> ConfigCheck:
    """Like `load_config`, but answers every problem and the model entries that passed."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        return ConfigCheck(source, (f"cannot read the file: {error.strerror}",))
    return check_config_text(text, source, base_dir=Path(path).resolve().parent)


def check_config_text(text: str, source: str = "<config>", base_dir: Path | None = None) -> ConfigCheck:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return ConfigCheck(source, (_yaml_problem(error),))
    if not isinstance(document, dict):
        return ConfigCheck(source, ("the file must be a mapping with 'server' and 'models' keys",))
    shell, problems = _check_top_level(document, source)
    entries, list_problems = _model_entries(document)
    models = [(i, _resolve_path(m, base_dir)) for i, m in _check_models(entries, problems)]
    problems += pipeline_problems(entries, dict(models)) + split_problems(entries, dict(models))
    problems += pool_problems(shell.server.pool if shell else None, [model for _, model in models])
    problems = by_entry(problems + list_problems + _uniqueness_problems(entries))
    config = None
    if shell is not None and not problems:
        config = shell.model_copy(update={"models": tuple(model for _, model in models)})
    return ConfigCheck(source, tuple(problems), tuple(models), config)


def by_entry(problems: list[str]) -> list[str]:
    """Problems of the file as a whole first, then each model entry's, in the file's order."""
    return sorted(problems, key=lambda problem: int(m.group(1)) if (m := _ENTRY.match(problem)) else -1)


def _check_top_level(document: dict[Any, Any], source: str) -> tuple[Config | None, list[str]]:
    """Everything but the model entries, which are checked one by one so that none hides another."""
    problems = [_unknown_key(("source",))] if "source" in document else []
    rest = {key: value for key, value in document.items() if key not in ("models", "source")}
    try:
        shell = Config.model_validate({**rest, "models": (), "source": source})
    except ValidationError as error:
        return None, problems + [_describe(e) for e in error.errors()]
    return (None if problems else shell), problems


def _model_entries(document: dict[Any, Any]) -> tuple[list[Any], list[str]]:
    if "models" not in document:
        return [], ["models: required but missing; list at least one model"]
    entries = document["models"]
    if entries is None or entries == []:
        return [], ["models: list at least one model"]
    if not isinstance(entries, list):
        return [], [f"models: expected a list of models (got {_short(entries)})"]
    return entries, []


def _check_models(entries: list[Any], problems: list[str]) -> list[tuple[int, ModelConfig]]:
    """Each entry that passes, by index; every entry's problems are added to `problems`."""
    models = []
    for index, entry in enumerate(entries):
        found = _rule_problems(entry, index)
        try:
            model = ModelConfig.model_validate(entry)
        except ValidationError as error:
            errors = [e for e in error.errors() if not inherited_error(entry, e["loc"])]  # named at the base key
            found = [_describe({**e, "loc": ("models", index, *e["loc"])}) for e in errors] + found
        problems += found
        if not found:
            models.append((index, model))
    return models


def _rule_problems(entry: Any, index: int) -> list[str]:
    """A model entry's rules that join several fields, read from the YAML as written so that they
    hold even where a field's own value is wrong."""
    if not isinstance(entry, dict):
        return []
    return _entry_rule_problems(entry, f"models[{index}]")


def _entry_rule_problems(entry: dict[Any, Any], where: str) -> list[str]:
    if entry.get("versions") is not None:
        return version_entry_problems(entry, where, _entry_rule_problems)
    if entry.get("split") is not None:
        return split_entry_problems(entry, where)
    if entry.get("pipeline") is not None:
        return pipeline_entry_problems(entry, where)
    problems = pool_entry_problems(entry, where) + plain_entry_problems(entry, where)
    if (entry.get("path") is None) == (entry.get("handler") is None):
        problems.append(
            f"{where}: give exactly one of 'path' (a model file), 'handler' (a class), 'pipeline' (models in turn) or 'split' (variants by weight)"
        )
    if entry.get("generation") is not None and entry.get("handler") is None:
        problems.append(f"{where}.generation: a generative model needs 'handler' (a GenerativeHandler class)")
    problems += priority_problems(entry, where)
    problems += _concurrency_problems(entry, where)
    device = entry.get("device", "cpu")
    if not (isinstance(device, str) and _DEVICE.match(device)):
        return problems  # the device's own check names it
    if entry.get("gpus") is not None and device != "cuda":
        why = "this model's device is 'cpu'" if device == "cpu" else f"{device!r} already names one GPU"
        problems.append(f"{where}.gpus: goes with device 'cuda' ({why})")
    if entry.get("batch_wait") == "fixed" and entry.get("batch_timeout_ms") is None:
        problems.append(f"{where}.batch_wait: 'fixed' needs batch_timeout_ms, how long a partial batch waits")
    if entry.get("gpu_memory_fraction") is not None and device == "cpu":
        problems.append(f"{where}.gpu_memory_fraction: applies only to a CUDA device (this model's device is 'cpu')")
    return problems


def _concurrency_problems(entry: dict[Any, Any], where: str) -> list[str]:
    concurrency = entry.get("max_concurrency", 1)
    if not isinstance(concurrency, int) or concurrency <= 1:
        return []  # 1, or a value its own check names
    if entry.get("handler") is None or entry.get("generation") is not None:
        kind = "a generative model" if entry.get("generation") is not None else "a model file"
        return [
            f"{where}.max_concurrency: {concurrency} batches at once need a handler whose predict is "
            f"'async def' (this is {kind}); remove max_concurrency"
        ]
    return []


def _uniqueness_problems(entries: list[Any]) -> list[str]:
    """Each repeated name or route, named at the entry that repeats it."""
    problems = []
    names: dict[str, int] = {}
    routes: dict[str, tuple[int, bool]] = {}  # route -> (first entry's index, whether written out)
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            problems.append(
                f"models[{index}].name: {name!r} is already the name of models[{names[name]}]; choose another"
            )
        names.setdefault(name, index)
        route, explicit = _route_of(entry, name)
        if route in routes:
            problems += _route_clash(route, routes[route], (index, explicit))
        routes.setdefault(route, (index, explicit))
    return problems


def _route_of(entry: dict[Any, Any], name: str) -> tuple[str, bool]:
    """The entry's native route, and whether it is written out (else it is the default)."""
    route = entry.get("route")
    return (route, True) if isinstance(route, str) else (f"/models/{name}/predict", False)


def _route_clash(route: str, first: tuple[int, bool], later: tuple[int, bool]) -> list[str]:
    (first_index, first_explicit), (later_index, later_explicit) = first, later
    if later_explicit:
        return [f"models[{later_index}].route: {route!r} is already the route of models[{first_index}]; choose another"]
    if first_explicit:
        return [f"models[{first_index}].route: {route!r} is the default route of models[{later_index}]; choose another"]
    return []  # two default routes clash only where two names do, and the name is reported


def _resolve_path(model: ModelConfig, base_dir: Path | None) -> ModelConfig:
    if base_dir is None:
        return model
    if model.versions:
        model = model.model_copy(update={"versions": tuple(_resolve_path(v, base_dir) for v in model.versions)})
    if model.outputs and any(spec.label_filename for spec in model.outputs):
        outputs = tuple(_resolve_labels(spec, base_dir) for spec in model.outputs)
        model = model.model_copy(update={"outputs": outputs})
    if model.path is None or model.path.is_absolute():
        return model
    return model.model_copy(update={"path": base_dir / model.path})


def _resolve_labels(spec: TensorSpec, base_dir: Path) -> TensorSpec:
    if spec.label_filename is None or spec.label_filename.is_absolute():
        return spec
    return spec.model_copy(update={"label_filename": base_dir / spec.label_filename})


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {getattr(error, 'problem', None) or error}"


def yaml_path(location: tuple[int | str, ...]) -> str:
    """('models', 1, 'cpu_affinity') -> 'models[1].cpu_affinity'."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: Any) -> str:
    location = tuple(part for part in error["loc"] if part != "source")
    if error["type"] == "extra_forbidden":
        return _unknown_key(location)
    if error["type"] == "missing":
        return f"{yaml_path(location)}: required but missing"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{yaml_path(location)}: expected a mapping of keys to values (got {_short(error.get('input'))})"
    message = _INTERNAL_WORDS.sub("", error["msg"].removeprefix("Value error, ")).replace("valid tuple", "valid list")
    value = error.get("input")
    if isinstance(value, dict):  # a whole section: its rule's message names the keys
        return f"{yaml_path(location)}: {message}"
    return f"{yaml_path(location)}: {message} (got {_short(value)})"


def _unknown_key(location: tuple[int | str, ...]) -> str:
    key = str(location[-1])
    parent = next((p for p in reversed(location[:-1]) if isinstance(p, str)), None)
    section = _SECTIONS.get(parent, Config)
    known = [field.alias or name for name, field in section.model_fields.items() if name != "source"]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(known)}"
    return f"{yaml_path(location)}: unknown key{hint}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

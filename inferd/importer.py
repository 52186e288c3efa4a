"""Importing what a config names by `package.module:Name` or `relative/file.py:Name` (handler
classes, middleware), with errors that tell a module that is missing from one that failed to import
something else or raised while it was imported (after uvicorn's importer). `what` names the thing
in every message ("handler", "middleware")."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from inferd.errors import StartupError


def import_named(spec: str, base_dir: Path, what: str) -> tuple[Any, str, str]:
    """The module `spec` names (a file relative to `base_dir`, or a module on sys.path and
    `base_dir`), with the module's name as written and the attribute's name."""
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name:
        return import_file(base_dir / module_name, what), module_name, attribute
    return import_module(module_name, base_dir, what), module_name, attribute


def import_module(name: str, base_dir: Path, what: str) -> Any:
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            raise StartupError(f"{what} module {name!r} not found (searched {base_dir} and sys.path)") from None
        raise StartupError(f"{what} module {name!r} failed to import {error.name!r}: {error}") from None
    except Exception as error:  # the user's module raised while it was imported
        raise StartupError(f"{what} module {name!r} raised on import: {one_line(error)}") from None


def import_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise StartupError(f"{what} file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"inferd_{what}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise StartupError(f"{what} file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        raise StartupError(f"{what} file {path} failed to import {error.name!r}: {error}") from None
    except Exception as error:  # the user's file raised (or does not parse) while it was imported
        raise StartupError(f"{what} file {path} raised on import: {one_line(error)}") from None
    return module


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1]}" if text else type(error).__name__

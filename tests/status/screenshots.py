"""The screenshots the status page's tests took, named again at the end of the test output (a module
of its own: pytest may import a conftest under another name than the tests do)."""

from __future__ import annotations

from pathlib import Path

SCREENSHOTS: list[tuple[str, Path]] = []


def keep_screenshot(test: str, path: Path) -> None:
    print(f"screenshot of the status page: {path}")
    SCREENSHOTS.append((test, path))

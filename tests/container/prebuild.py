"""Build the image ahead of the container tests: CI runs this beside the plain suite, and the
tests' own `podman build` of the same tree and arguments then finds every layer in podman's
cache, so the build's minutes of unpacking leave the container job's critical path.

    python -m tests.container.prebuild      # after tests/container/setup_podman.sh, as root
"""

from __future__ import annotations

import contextlib
import time

from tests.container.test_image import build_image


def main() -> None:
    started = time.monotonic()
    build_image(lambda step: contextlib.nullcontext())
    print(f"image built ahead of the container tests in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Print `name==floor` for the HTTP-facing dependencies, read from pyproject.toml's `>=` bounds.

CI installs these pins into a second environment and runs the tests again, so the floors the
package declares are versions the tests have really run against (each floor excludes releases
with known security bugs: see the comments in pyproject.toml).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

CHECKED = ("starlette", "uvicorn", "h11", "httptools")


def floors(pyproject: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement)
        if match and match.group(1).lower() in CHECKED:
            found[match.group(1).lower()] = match.group(2)
    return found


def main() -> int:
    found = floors(Path(__file__).resolve().parents[1] / "pyproject.toml")
    missing = [name for name in CHECKED if name not in found]
    if missing:
        print(f"pyproject.toml names no '>=' floor for {', '.join(missing)}", file=sys.stderr)
        return 1
    for name, version in found.items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

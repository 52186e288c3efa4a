"""API keys' names: what metrics and rate limits call a key, so that the key itself never leaves
the server's memory.

An entry of `api_keys_env` or `api_keys_file` is `name:key` (in a file also `name: key`), or a bare
key, which is named `key-N` by its position among the entries (the variable's first, then the
file's). A name is letters, digits, '_', '.', '-', starting with a letter or digit; a bare key
whose text reads as `name:rest` is taken as named, so give such a key a name of its own.
"""

from __future__ import annotations

import re

from inferd.errors import ConfigError

_NAMED = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):\s*(\S+)")


def name_keys(entries: list[str], field: str, source: str) -> tuple[tuple[str, bytes], ...]:
    """Each entry as (name, key); two keys of one name are a ConfigError."""
    named: list[tuple[str, bytes]] = []
    for position, entry in enumerate(entries, start=1):
        match = _NAMED.fullmatch(entry)
        name, key = (match.group(1), match.group(2)) if match else (f"key-{position}", entry)
        named.append((name, key.encode()))
    names = [name for name, _ in named]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            source, [f"server.auth.{field}: two keys are named {repeated[0]!r}; give each key a name of its own"]
        )
    return tuple(named)

"""Files named in a config: where a relative path points."""

from __future__ import annotations

import os


def resolve_path(path: str, source: str | None) -> str:
    """``path`` as written in ``source`` (the config file): absolute as is; a relative one
    next to the config file when it exists there, else from the working directory (the rule
    for plugin files and TLS certificates alike)."""
    if os.path.isabs(path):
        return path
    if source and os.path.isfile(source):
        beside = os.path.join(os.path.dirname(os.path.abspath(source)), path)
        if os.path.exists(beside):
            return beside
    return os.path.abspath(path)

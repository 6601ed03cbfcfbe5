"""Writing a file atomically: to a temporary name beside it, then renamed.

A reader never sees a half-written output, and a run killed mid-write leaves only a hidden
``.NAME.*.tmp`` file that the next run removes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp)`` to a temporary name beside ``path``, then rename.

    Parameters
    ----------
    path
        Destination; parent folders are created.
    write
        Writes the content to the temporary path it is given; when it raises, the
        temporary file is removed and ``path`` is left as it was.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return atomic_write_all([(path, write)])[0]


def atomic_write_all(items: list[tuple[Path, Callable[[Path], None]]]) -> list[Path]:
    """Write several files as one: every file goes to its temporary name first, and only
    when all are written are they renamed into place. A failure (a full disk) leaves every
    earlier file as it was and no temporary behind.

    Parameters
    ----------
    items
        ``(path, write)`` pairs; ``write(tmp)`` writes the content to ``tmp``.

    Returns
    -------
    list of pathlib.Path
        The paths written, in order.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            temps.append((tmp, path))
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [path for _, path in temps]


# Longest id used as a file name: the run adds a suffix ('.subsets.parquet', '_<template>.png')
# and file systems refuse names over 255 bytes.
MAX_NAME_BYTES = 120


def file_name_problem(name: str) -> str | None:
    """Why a user-given name (a sample id, a template name) cannot be a file name, or None.

    Such names become files of the run (``events/<sample_id>.parquet``); a separator or
    ``..`` would write outside the folder, a control character or a very long name fails at
    write time on some file systems.

    Parameters
    ----------
    name
        The name.

    Returns
    -------
    str or None
        The reason, or None when the name is safe.
    """
    if not name or name.strip() != name:
        return "is empty or starts or ends with a space"
    if "/" in name or "\\" in name:
        return "contains a path separator (/ or \\)"
    if name.startswith("."):
        return "starts with '.' (hidden, or a path such as '..')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or any(c in name for c in '<>:"|?*'):
        return 'contains a control character or one of < > : " | ? *'
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None

"""Writing files so that a failure never leaves a half-written output behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_file_mode() -> int:
    """0o666 minus the process umask: what open() would give a new file (mkstemp's own is 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> None:
    """Call write(file) on a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

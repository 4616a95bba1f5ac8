"""Shared test constants and helpers."""
import struct
import zlib
from pathlib import Path

import pytest

# The smallest FusionMamba that keeps every module: fast enough for unit tests.
TINY = dict(dims=[8, 16, 32, 64], dims_decoder=[64, 32, 16, 8], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])

# Real image pairs kept beside the repository (research-use data, never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path of a file or folder under ../shared/data; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared sample data ({path} is absent)")
    return path


def write_bomb_png(path, width: int = 30_000, height: int = 30_000) -> None:
    """A 45-byte PNG whose header declares width x height pixels (900 M by default) and holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))

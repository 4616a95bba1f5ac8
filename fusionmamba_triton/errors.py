"""User-facing errors: what the commands and the comparison report say, in one line, when something fails."""
from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def describe_error(exc: BaseException, paths=()) -> str:
    """One line for a failure: its message (with the exception type when that is not self-explanatory),
    prefixed with the files involved unless the message already names one."""
    import torch

    text = str(exc).strip()
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        message = "out of GPU memory; fuse in tiles with e.g. --tile 512"
    elif isinstance(exc, MemoryError) or "can't allocate memory" in text:
        message = "out of memory; fuse in tiles with e.g. --tile 512"
    elif isinstance(exc, (CLIError, ValueError, OSError)):
        message = text.splitlines()[0] if text else type(exc).__name__
    else:
        message = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    if paths and not any(str(p) in message for p in paths):
        message = f"{' + '.join(str(p) for p in paths)}: {message}"
    return message

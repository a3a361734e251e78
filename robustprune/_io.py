"""The one atomic write of robustprune.

Every file robustprune writes (checkpoints, ``results.jsonl``, ``summary.md``, AutoAttack
state, pruned models) goes through :func:`atomic_write`: the data is written to a temporary
file in the destination's own directory, flushed and fsynced, given the same permissions a
plain ``open(path, "w")`` would give (``0o666`` minus the umask), and renamed over the
destination with :func:`os.replace`. A reader therefore sees either the old file or the
complete new one, never a torn write, even if the process is killed mid-way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_torch_save", "FILE_MODE"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: permission bits of every file robustprune writes (what ``open(path, "w")`` would give)
FILE_MODE = _default_mode()


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data`` is text (written as UTF-8), bytes, or a callable that writes to the binary
    file object it is given (``lambda f: torch.save(obj, f)``). The parent directory must
    exist. On any error the destination is left as it was and the temporary file removed.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, str):
                fh.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))

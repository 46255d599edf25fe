"""Atomic file writes: every file egdnp writes goes through :func:`atomic_write`.

A checkpoint or reference bundle that a later run reads must never be lost to
a failed save (a full disk, an exception while serialising, a killed process).
So the bytes go to a temporary file in the target's own folder (same file
system, so the final rename is atomic), are flushed and fsynced, and only then
``os.replace`` the target.  On any exception the temporary file is removed and
the previous file is untouched.

This module sits on the ground floor beside :mod:`egdnp._backend`; it knows
files, not arrays.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterator

__all__ = ["atomic_write"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a written file gets the permissions open() would have given it.
_UMASK = _read_umask()


@contextmanager
def atomic_write(path: Any, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The file to (re)write.  Its folder must exist.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        Text encoding for ``mode="w"`` (default UTF-8).

    Yields
    ------
    file object
        Write to it; the target is replaced after the ``with`` block exits
        without an exception (flush, fsync, ``os.replace``, fsync of the folder).

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "x.npz")
    >>> with atomic_write(target) as fh:
    ...     np.savez(fh, x=np.arange(3))
    >>> sorted(os.listdir(os.path.dirname(target)))
    ['x.npz']
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r} must be 'wb' or 'w'")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path!r}: its folder {folder!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        kwargs = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

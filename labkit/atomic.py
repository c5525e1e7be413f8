"""Atomic writes: a reader (or a learner whose kernel died half-way) sees the old file or folder or the new
one, never half of one. Nothing the learner trained is lost to an interrupted save.

Both helpers write beside the target (same folder, so the same file system) and move the result into place
with os.replace, which is atomic on POSIX and Windows for a file. A folder that already exists is swapped
with the new one in one step where the system can (Linux: renameat2's RENAME_EXCHANGE), so a process killed
at any moment leaves a complete folder at PATH, old or new. Elsewhere the old folder is renamed aside to
``.<name>.old`` first; a kill between that rename and the next leaves PATH missing for a moment, and
``recover(PATH)`` (called by every ``folder()`` and by labkit's loaders) puts the old folder back.

    atomic.write_text(path, text)            # also write_json(path, obj)
    with atomic.folder(path) as tmp:         # write anything into tmp; it becomes PATH on success
        model.save_pretrained(tmp)
    atomic.recover(path)                     # before reading PATH: undo a save killed half-way
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write TEXT to PATH atomically (a temporary file beside it, flushed to disk, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); a saved file is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    """OBJ as JSON (with a final newline) at PATH, atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot swap
        return False
    raise OSError(err, os.strerror(err), str(a))


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover(path: str | os.PathLike) -> Path:
    """Undo a folder() save that was killed half-way: if PATH is missing and its old copy (.<name>.old)
    is there, put it back. Returns PATH. Cheap; safe to call before every read."""
    path = Path(path)
    old = _aside(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    return path


@contextlib.contextmanager
def folder(path: str | os.PathLike):
    """Yield a fresh temporary folder beside PATH; when the block ends without an error it replaces PATH.

    On an error (or an interrupt) the temporary folder is removed and PATH keeps what it held before (or
    stays absent). An existing PATH is swapped with the new folder in one step where the system can, else
    renamed aside and removed once the new one is in place (see the module's docstring and recover()).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    shutil.rmtree(_aside(path), ignore_errors=True)  # a complete PATH exists: its old copy is stale
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a saved folder is not
    old = None
    try:
        yield tmp
        if path.exists() and _exchange(tmp, path):
            old = tmp  # the swap put the old folder where the new one was
        else:
            if path.exists():
                old = _aside(path)
                os.replace(path, old)
            os.replace(tmp, path)
    except BaseException:
        if old is not None and old != tmp:
            recover(path)
        if old != tmp or not path.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Atomic writes: a reader (or a learner whose kernel died half-way) sees the old file or folder or the new
one, never half of one. Nothing the learner trained is lost to an interrupted save.

Both helpers write beside the target (same folder, so the same file system) and move the result into place
with os.replace, which is atomic on POSIX and Windows for a file. A folder that already exists is first
renamed aside, then replaced, then the old copy is removed; if anything fails the old folder is put back.

    atomic.write_text(path, text)            # also write_json(path, obj)
    with atomic.folder(path) as tmp:         # write anything into tmp; it becomes PATH on success
        model.save_pretrained(tmp)
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


@contextlib.contextmanager
def folder(path: str | os.PathLike):
    """Yield a fresh temporary folder beside PATH; when the block ends without an error it replaces PATH.

    On an error (or an interrupt) the temporary folder is removed and PATH keeps what it held before (or
    stays absent). The old PATH is renamed aside first and removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a saved folder is not
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Atomic writes of local files and output directories.

A reader never sees half a file, and a job that fails leaves the previous artifacts of its
`--out` directory as they were: outputs are written into a staging directory beside the target
and moved in, file by file with `os.replace`, only once the whole job has succeeded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sigdl.core.errors import InputError

FILE_MODE = 0o644  # what `open()` gives under the usual umask 022


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would hide artifacts from other readers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def check_writable_dir(out: str | Path) -> Path:
    """Resolve an `--out` directory, creating it; raise InputError when it cannot be written."""
    out = Path(out).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {str(out)!r} cannot be created: {exc.strerror}") from None
    if not out.is_dir():
        raise InputError(f"--out {str(out)!r} is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {str(out)!r} is not writable")
    return out


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a staging directory whose files replace those of `out` only if the block succeeds."""
    out = check_writable_dir(out)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        for src in sorted(stage.rglob("*")):
            if src.is_file():
                dst = out / src.relative_to(stage)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

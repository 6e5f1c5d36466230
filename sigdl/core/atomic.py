"""Atomic writes of local files and whole output directories.

A reader never sees half a file, and an `--out` directory is replaced in whole: a command
writes into a fresh staging directory beside `--out` and swaps it in only once the whole job
has succeeded. Until then the previous `--out` is exactly as it was (absent stays absent, not
even its parents are created); afterwards it holds only the new run's files.

The swap (POSIX has no "replace a non-empty directory" rename): where Linux's
renameat2(RENAME_EXCHANGE) works, the staged and the previous directory trade places in one
atomic step, so `--out` never disappears, and the old contents are then removed. Elsewhere
(another OS, a file system without it, no glibc) the previous directory is renamed aside to a
hidden sibling, the staged one renamed in, and the old one removed: for that moment `--out` is
absent, and a crash in it leaves the previous run whole in `.<name>.old-*` beside it.

    with staged_dir("runs/c", inputs=["runs/lenet5"]) as stage:
        write_json(stage / "report.json", report)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from sigdl.core.errors import InputError

FILE_MODE = 0o644  # what `open()` gives under the usual umask 022
DIR_MODE = 0o755  # mkdtemp's 0700 would hide a fresh --out from other readers
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


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


def check_out_dir(
    out: str | Path, inputs: Iterable[str | Path] = (), *, inside_ok: bool = False
) -> Path:
    """Resolve an `--out` directory without creating it; InputError when it exists and is not
    a directory, cannot be created, is an input, lies inside an input (unless `inside_ok`), or
    holds one (swapping it in whole would delete that input)."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is not a directory")
    if out.parent == out:
        raise InputError(f"--out {str(out)!r} is a file system root: expected a folder in one")
    for given in inputs:
        source = Path(given).expanduser().resolve()
        what = f"--out {str(out)!r}"
        if out == source:
            raise InputError(f"{what} is the input {str(source)!r}: expected a folder apart "
                             "from the inputs (it is replaced in whole)")  # fmt: skip
        if source.is_relative_to(out):
            raise InputError(f"{what} holds the input {str(source)!r}: replacing it in whole "
                             "would delete the input; expected a folder apart from it")  # fmt: skip
        if out.is_relative_to(source) and source.is_dir() and not inside_ok:
            raise InputError(f"{what} is inside the input {str(source)!r}: expected a folder "
                             "apart from the inputs")  # fmt: skip
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise InputError(f"--out {str(out)!r} cannot be created: {str(base)!r} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"--out {str(out)!r} cannot be written: {str(base)!r} is not writable")
    return out


def _existing_ancestor(path: Path) -> Path:
    """`path`'s parent, or the nearest of its ancestors that exists."""
    parent = path.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    return parent


@contextlib.contextmanager
def staged_dir(
    out: str | Path, inputs: Iterable[str | Path] = (), *, inside_ok: bool = False
) -> Iterator[Path]:
    """Yield a fresh staging directory beside `out` that replaces `out` in whole only if the
    block succeeds (see the module docstring); `inputs` as in `check_out_dir`."""
    out = check_out_dir(out, inputs, inside_ok=inside_ok)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=_existing_ancestor(out)))
    try:
        yield stage
        stage.chmod(stat_mode(out))
        out.parent.mkdir(parents=True, exist_ok=True)  # staged higher up when it was absent
        swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def stat_mode(out: Path) -> int:
    """The permission bits the new `out` gets: the previous one's, else DIR_MODE."""
    return out.stat().st_mode & 0o7777 if out.is_dir() else DIR_MODE


def swap_in(stage: Path, out: Path) -> None:
    """Make the directory `stage` be `out`, replacing `out` in whole; `stage` is gone after.
    (The caller removes `stage` if this raises: `out` is then as it was.)"""
    if not out.exists():
        os.rename(stage, out)
        return
    if _exchange(stage, out):  # `stage` now holds the previous run
        shutil.rmtree(stage, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "out")
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old / "out", out)  # put the previous run back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE); False where the OS or file system cannot."""
    if _renameat2 is None:
        return False
    # nonzero: EINVAL (file system), ENOSYS (kernel): the rename-aside path does it then
    return _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _load_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or a glibc before 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()

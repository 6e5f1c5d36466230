"""The artifact chain: every file a stage wrote, bound by its sha256 to what was measured on it.

A `sigdl train` or `sigdl compress` output folder holds a `report.json` whose `files` block
names every other file of the folder with its sha256, and whose `chain` block says which file
each came from and the accuracy measured on it (model.sdc from the checkpoint, model.onnx
decoded from model.sdc, model.int8.onnx quantized from model.onnx). Whoever reads such a folder
(deploy, retest, decompress, export, compress itself) verifies the files it uses first::

    report = verify_folder("runs/lenet5-dc", ("model.sdc", "model.onnx"))

A file that changed after the stage wrote it, one the report lists that is gone, or a model
file the report does not list (left over, or copied in) is refused with a ChainError that names
the file and the digest expected. What the chain guards against is a folder that no longer is
what was evaluated (an edit, a partial copy, files of two runs mixed); a forger who rewrites
report.json along with the files is the edge package's signature's business, not this one's.
A report written before the chain existed (no `files` block) is read without a check.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from sigdl.core.errors import InputError, short

REPORT = "report.json"
PRODUCERS = ("train", "compress")  # the stages whose reports bind model files
CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ChainError(InputError):
    """A file that is not the one a report (or model.json) recorded: changed, missing, extra."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(folder: str | Path) -> dict[str, str]:
    """{relative name: sha256} of every file under `folder` except its report.json."""
    root = Path(folder)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {name: sha256_file(root / name) for name in names if name != REPORT}


def check_digest(path: Path, expected: object, recorded_in: str) -> str:
    """`path`'s sha256 when it is `expected`, else ChainError naming file and digest."""
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise ChainError(f"{recorded_in} records sha256 {short(expected)} for {path.name}: "
                         "expected 64 lowercase hex digits")  # fmt: skip
    got = sha256_file(path)
    if got != expected:
        raise ChainError(f"{str(path)!r} has sha256 {got[:16]}..., not {expected} as recorded in "
                         f"{recorded_in}: the file changed after it was written")  # fmt: skip
    return got


def read_report(folder: Path) -> dict | None:
    """The folder's report.json as a dict; None when there is none."""
    path = folder / REPORT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChainError(f"{str(path)!r} is not valid JSON ({short(str(exc))})") from None
    if not isinstance(data, dict):
        raise ChainError(f"{str(path)!r}: expected a JSON object, got {type(data).__name__}")
    return data


def verify_folder(folder: str | Path, names: Iterable[str]) -> dict | None:
    """Check the files `names` of a train/compress output folder against its report.json;
    return the report (None: no report, or one of another stage, so nothing to check)."""
    root = Path(folder)
    report = read_report(root)
    if report is None or report.get("command") not in PRODUCERS or "files" not in report:
        return report
    recorded = report["files"]
    where = f"{str(root / REPORT)!r}"
    if not isinstance(recorded, dict):
        raise ChainError(f"{where}: files={short(recorded)}, expected names to sha256 digests")
    for name in names:
        present = (root / name).is_file()
        if name in recorded and not present:
            raise ChainError(f"{str(root / name)!r} is missing: {where} records it with sha256 "
                             f"{short(recorded[name])}")  # fmt: skip
        if present and name not in recorded:
            raise ChainError(f"{str(root / name)!r} is not one of the files {where} records "
                             f"({', '.join(sorted(recorded)) or 'none'}): left over or copied "
                             "in after the run")  # fmt: skip
        if present:
            check_digest(root / name, recorded[name], where)
    return report


def check_not_recorded(path: str | Path, option: str) -> Path:
    """Refuse to write `path` over a file that its folder's train/compress report records (the
    run would no longer be what was evaluated); return the resolved path."""
    path = Path(path).expanduser().resolve()
    report = read_report(path.parent) if path.parent.is_dir() else None
    files = report.get("files") if report and report.get("command") in PRODUCERS else None
    if isinstance(files, dict) and path.name in files:
        raise ChainError(f"{option} {str(path)!r} would overwrite a file that "
                         f"{str(path.parent / REPORT)!r} records: expected a path outside "
                         "that run")  # fmt: skip
    return path


def data_digest(dataset: object) -> str:
    """sha256 of a data set's decoded splits (images and labels of train, then test): which
    data an accuracy was measured on, whatever files or generator it came from."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.test):  # type: ignore[attr-defined]
        for tensor in (split.images, split.labels):
            digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def bound_inputs(folder: str | Path, names: Iterable[str]) -> dict:
    """What a report records of the files it read from `folder`: {"folder", "files"}."""
    root = Path(folder)
    files = {n: sha256_file(root / n) for n in names if (root / n).is_file()}
    return {"folder": str(root), "files": files}

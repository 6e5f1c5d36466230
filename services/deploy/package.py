"""The edge package: `model.onnx`, `model.sdc` when there is one, and `manifest.json`.

A source is a run directory (a `sigdl train` or `sigdl compress` output: the model files and
`report.json`, maybe a retest report beside them) or an edge package already built (a folder
holding `manifest.json`), on local disk or in the artifact store::

    with open_source("runs/lenet5-dc") as src:
        manifest = build_manifest(src, fleet="lab", target="jetson-tx2", version="v1")

A run directory is checked against the artifact chain first (sigdl/core/chain.py): a model
file changed after `sigdl train` / `sigdl compress` wrote it, or one its report.json does not
record, is refused, naming the file and the digest expected; so is a retest report that
measured other bytes than the files shipped under the same names.

The manifest names every file with its sha256 and size, the target, the metrics the stages
measured (accuracy, size, ratio, and latency/fps/power when a retest report is there) and the
lineage ids (MLflow run, registered model version) that tie the package to its training, and
the oldest edge agent that runs it (`min_agent_version`). Publishing signs the manifest's exact
bytes (sigdl/core/signing.py); the `signature` file travels beside it in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import onnx

from sigdl.core import __version__, chain, onnx_io, sdc, store
from sigdl.core.errors import InputError, short

PACKAGE_FORMAT = "sigdl-edge-package"  # `format` of every manifest
FORMAT_VERSION = 1  # bumped when a reader of older manifests would misread a new one
# the oldest `sigdl edge-agent` that runs a package of this format (it checks the signature and
# picks the model file by the target's precision); an older agent refuses the package
MIN_AGENT_VERSION = "0.1.0"
MANIFEST = "manifest.json"
# what a package ships: model.onnx is required; model.int8.onnx (QDQ, from a recipe with a
# quantize step) is what an int8 target runs; model.sdc is the compressed weights
MODEL_FILES = ("model.onnx", "model.int8.onnx", "model.sdc")
ONNX_FILES = ("model.onnx", "model.int8.onnx")
REPORT = "report.json"
# Where a retest report of the same model is looked for when the caller names none: a retest
# run writes its own report.json, so beside a run it lives in a subfolder or under another name
RETEST_REPORTS = ("retest/report.json", "retest.json")


@dataclass
class Source:
    """A deploy source made local: its files on disk and what its reports say."""

    uri: str  # what the caller named, as an artifact URI
    root: Path  # local folder holding the files (the source itself, or a download of it)
    files: dict[str, Path] = field(default_factory=dict)  # package file name -> local path
    report: dict | None = None  # the train/compress report.json, if any
    retest: dict | None = None  # a retest report of this model, if any
    manifest: dict | None = None  # set when the source is itself an edge package


# --- reading a source -------------------------------------------------------------------------
@contextlib.contextmanager
def open_source(source: str, retest_report: str | None = None) -> Iterator[Source]:
    """Yield the source as local files, checked; a download is removed afterwards."""
    uri = store.as_uri(source)
    retest_uri = store.as_uri(retest_report) if retest_report else None
    if uri.startswith("file:"):
        yield _load(uri, _local_dir(uri), retest_uri)
        return
    with tempfile.TemporaryDirectory(prefix="sigdl-deploy-") as tmp:
        yield _load(uri, _download(uri, Path(tmp)), retest_uri)


def _local_dir(uri: str) -> Path:
    path = store.FileBackend.path_of(uri)
    if not path.exists():
        raise store.ArtifactNotFoundError(uri)
    if not path.is_dir():
        raise InputError(
            f"deploy source {uri!r} is a file: expected a run directory (model.onnx, "
            "report.json) or an edge package directory (manifest.json)"
        )
    return path


def _download(uri: str, into: Path) -> Path:
    """Fetch the files a package can use from a remote prefix (not the checkpoint weights)."""
    prefix = uri.rstrip("/")
    present = {u[len(prefix) + 1 :] for u in store.list_uris(prefix)}
    if not present:
        raise store.ArtifactNotFoundError(uri)
    for name in (*MODEL_FILES, MANIFEST, REPORT, *RETEST_REPORTS):
        if name in present:
            store.get_file(f"{prefix}/{name}", into / name)
    return into


def _load(uri: str, root: Path, retest_uri: str | None) -> Source:
    src = Source(uri=uri, root=root)
    if (root / MANIFEST).is_file():
        src.manifest = read_json(root / MANIFEST, "manifest")
        src.files = verify_package(root, src.manifest, uri)
        return src
    if not (root / "model.onnx").is_file():
        raise InputError(
            f"deploy source {uri!r} has no model.onnx: expected a `sigdl train` or "
            "`sigdl compress` output directory, or an edge package"
        )
    src.files = {n: root / n for n in MODEL_FILES if (root / n).is_file()}
    chain.verify_folder(root, MODEL_FILES)
    check_model_files(src.files)
    report = read_json(root / REPORT, "report") if (root / REPORT).is_file() else None
    if report is not None and report.get("command") == "retest":
        src.retest = report  # a retest run over this very folder
    else:
        src.report = report
    src.retest = _retest_report(root, retest_uri) or src.retest
    if src.retest is not None:
        check_retested_files(src.retest, src.files)
    return src


def check_retested_files(retest: dict, files: dict[str, Path]) -> None:
    """Refuse a retest report whose figures were measured on other bytes than the files
    shipped under the same names (a report of older retests carries no digests: not checked)."""
    inputs = retest.get("inputs")
    measured = (inputs.get("model") or {}).get("files") if isinstance(inputs, dict) else None
    if not isinstance(measured, dict):
        return
    for name, digest in measured.items():
        if name in files:
            got = chain.sha256_file(files[name])
            if got != digest:
                raise chain.ChainError(
                    f"the retest report measured {name} with sha256 {short(digest)}, but the "
                    f"package would ship {str(files[name])!r} with sha256 {got[:16]}...: "
                    "retest the files deployed"
                )


def _retest_report(root: Path, retest_uri: str | None) -> dict | None:
    if retest_uri is not None:
        data = store.get_bytes(retest_uri)
        return parse_json(data, retest_uri, "retest report")
    for name in RETEST_REPORTS:
        if (root / name).is_file():
            return read_json(root / name, "retest report")
    return None


def read_json(path: Path, what: str) -> dict:
    return parse_json(path.read_bytes(), str(path), what)


def parse_json(data: bytes, where: str, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {where!r} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} {where!r} is not a JSON object")
    return obj


# --- checking the files -----------------------------------------------------------------------
def check_model_files(files: dict[str, Path]) -> None:
    """Refuse to ship a model the edge could not load: ONNX must parse and keep the contract
    (`pixels` in, `logits` out); a .sdc must pass its own checksum and decode."""
    for name in ONNX_FILES:
        if name in files:
            _check_onnx(files[name])
    if "model.sdc" in files:
        sdc.read_sdc(files["model.sdc"])  # raises SdcError (an InputError) naming the file


def _check_onnx(path: Path) -> None:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf raises its own DecodeError; any failure means unusable
        raise InputError(f"{str(path)!r} is not a readable ONNX model: {exc}") from None
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if onnx_io.INPUT not in names[0] or onnx_io.OUTPUT not in names[1]:
        raise InputError(
            f"{str(path)!r} has inputs {names[0]} and outputs {names[1]}: expected "
            f"{onnx_io.INPUT!r} in and {onnx_io.OUTPUT!r} out (the deployable-model contract)"
        )


def file_entry(path: Path) -> dict:
    """The manifest's record of one file: its sha256 and size in bytes."""
    return {"sha256": store.sha256(store.as_uri(path)), "size": path.stat().st_size}


def verify_package(root: Path, manifest: dict, uri: str) -> dict[str, Path]:
    """Check a package's manifest against its files; return the files it lists."""
    if manifest.get("format") != PACKAGE_FORMAT or not isinstance(manifest.get("files"), dict):
        raise InputError(f"{uri!r}: manifest.json is not a {PACKAGE_FORMAT} manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{uri!r}: manifest format_version {manifest['format_version']} is newer than this "
            f"SigDL reads ({FORMAT_VERSION})"
        )
    files = {}
    for name, expected in manifest["files"].items():
        if name not in MODEL_FILES:
            raise InputError(f"{uri!r}: manifest lists {name!r}; a package holds {MODEL_FILES}")
        path = root / name
        if not path.is_file():
            raise InputError(f"{uri!r}: manifest lists {name!r} but the package lacks it")
        if file_entry(path) != {"sha256": expected.get("sha256"), "size": expected.get("size")}:
            raise InputError(f"{uri!r}: {name} does not match the sha256 in manifest.json")
        files[name] = path
    if "model.onnx" not in files:
        raise InputError(f"{uri!r}: the package has no model.onnx")
    return files


# --- the manifest -----------------------------------------------------------------------------
def content_digest(files: dict[str, dict], target: str) -> str:
    """One digest for what the edge runs (file digests and target), not when or where it was
    published: two publishes with the same content_sha256 deploy the same thing."""
    canonical = {"files": {n: e["sha256"] for n, e in sorted(files.items())}, "target": target}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def build_manifest(src: Source, *, fleet: str, target: str, version: str) -> dict:
    """The manifest.json of `src` published as `version` for `fleet`/`target`."""
    files = {name: file_entry(path) for name, path in sorted(src.files.items())}
    if src.manifest is not None:  # republishing a package: its story carries over
        described = {k: src.manifest.get(k) for k in ("model", "dataset", "input_shape")}
        metrics = dict(src.manifest.get("metrics") or {})
        lineage = {**(src.manifest.get("lineage") or {}), "source": src.uri}
        lineage["parent_package"] = {k: src.manifest.get(k) for k in ("fleet", "version")}
    else:
        report = src.report or {}
        described = {k: report.get(k) for k in ("model", "dataset", "input_shape")}
        metrics = report_metrics(report, files)
        lineage = report_lineage(report, src.uri)
    if src.retest is not None:
        metrics.update(retest_metrics(src.retest, target))
        retest_run = (src.retest.get("mlflow") or {}).get("run_id")
        lineage.update(_drop_none({"retest_run_id": retest_run}))
    return {
        "format": PACKAGE_FORMAT,
        "format_version": FORMAT_VERSION,
        "fleet": fleet,
        "target": target,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sigdl_version": __version__,
        "min_agent_version": MIN_AGENT_VERSION,
        **_drop_none(described),
        "files": files,
        "content_sha256": content_digest(files, target),
        "metrics": metrics,
        "lineage": lineage,
    }


def report_metrics(report: dict, files: dict[str, dict]) -> dict:
    """Accuracy, size and ratio from a train or compress report (ONNX Runtime figures first:
    they measured the very model.onnx that ships)."""
    m = report.get("metrics") or {}
    shipped = files.get("model.sdc") or files["model.onnx"]
    return _drop_none(
        {
            "accuracy": _first(m, "onnx_test_accuracy", "test_accuracy", "compressed_accuracy"),
            "dense_accuracy": m.get("dense_accuracy"),
            "int8_accuracy": m.get("int8_onnx_test_accuracy"),
            "size_bytes": shipped["size"],  # the .sdc when there is one: what a report calls size
            "onnx_bytes": files["model.onnx"]["size"],
            "int8_onnx_bytes": (files.get("model.int8.onnx") or {}).get("size"),
            "sdc_bytes": (files.get("model.sdc") or {}).get("size"),
            "compression_ratio": m.get("ratio"),
            "parameters": m.get("parameters", report.get("parameters")),
        }
    )


def retest_metrics(retest: dict, target: str) -> dict:
    """Latency, fps, power and the verdict of a retest report made for this very target."""
    tested = retest.get("target")
    if isinstance(tested, dict):
        tested = tested.get("name")
    if str(tested).partition(":")[0] != target:  # a power mode (jetson-tx2:maxq) is the device
        raise InputError(
            f"the retest report is for target {tested!r}, not {target!r}: its latency and power "
            "would describe another device; retest on this target or leave the report out"
        )
    verdict = retest.get("verdict") or {}
    memory = retest.get("memory")  # {"memory_mb", "ram_mb", ...} (services/retest/predict.py)
    accuracy = retest.get("accuracy")  # {"accuracy", "drop_pp", ...} when a data set was given
    accuracy = accuracy if isinstance(accuracy, dict) else {"accuracy": accuracy}
    return _drop_none(
        {
            "latency_ms": retest.get("latency_ms"),
            "p90_latency_ms": retest.get("p90_latency_ms"),
            "fps": retest.get("fps"),
            "power_w": retest.get("power_w"),  # an estimate from the profile's power model
            "energy_mj": retest.get("energy_mj"),
            # weights + peak activations on the target: what the agent's pod must hold
            "memory_mb": memory.get("memory_mb") if isinstance(memory, dict) else None,
            "precision": retest.get("precision"),
            "power_mode": retest.get("mode"),
            "target_accuracy": accuracy.get("accuracy"),
            "target_accuracy_drop_pp": accuracy.get("drop_pp"),
            "retest_passed": verdict.get("passed"),
        }
    )


def report_lineage(report: dict, source_uri: str) -> dict:
    """The ids that lead back to how the model was made."""
    ml = report.get("mlflow") or {}
    return _drop_none(
        {
            "source": source_uri,
            "stage": report.get("command"),
            "mlflow_tracking_uri": ml.get("tracking_uri"),
            "mlflow_run_id": ml.get("run_id"),
            "registered_model": ml.get("registered_model"),
            "model_version": ml.get("version"),
            "pipeline_run_id": ml.get("parent_run_id"),  # set when a pipeline run nested it
            "recipe_digest": report.get("recipe_digest"),
        }
    )


def _first(d: dict, *keys: str) -> object:
    return next((d[k] for k in keys if d.get(k) is not None), None)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}

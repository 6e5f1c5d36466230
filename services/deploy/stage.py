"""The deploy stage: build an edge package from a run and publish it to a fleet.

`run_deploy` is the plain function behind `sigdl deploy` and the DeployService. It packages
`model.onnx`, `model.sdc` (when the run has one) and a `manifest.json`, uploads them under
`<store>/fleets/<fleet>/<target>/<version>/`, reads every file back to check its sha256, and
only then moves the `current` pointer to the new version (services/deploy/fleet.py)::

    result = run_deploy("runs/lenet5-dc", "jetson-tx2", "lab")         # -> v1, current = v1
    result = run_deploy("s3://artifacts/runs/7", "jetson-tx2", "lab",
                        store_root="s3://artifacts")                     # -> v2 there
    rollback("lab", "jetson-tx2")                                        # current back to v1

Decisions where the design was silent:
- Publishing content identical to the current version (same files, same target) is a no-op
  that returns the current version with ``published: False``; anything else gets a new version.
  Identical to an older version is still a new version: the history stays a plain log.
- Versions are immutable: an explicit `version` that exists already is refused (unless it is
  the current one with the same content: the no-op above). Roll back to reach an old one.
- Without `version`, the next `vN` counts every numbered folder in the store, so a number is
  never reused, not even one whose upload failed.
- A retest report is taken into the manifest (latency, fps, power, verdict) only when it was
  made for the same target; another target's report is refused. A failed retest verdict is
  recorded (`metrics.retest_passed`), not enforced: the gate before deploy decides.
- Rollback without a version returns to the pointer's `previous` (what was current before).
- When the package names a registered MLflow version in the tracking store in force, the alias
  `deployed_<fleet>_<target>` follows `current` (publish and rollback); an MLflow failure is
  reported in the result's `mlflow`, not raised, since the package is already live.
- Publishers of one fleet/target are serialized within a process; across processes, the pointer
  is re-read just before the swap and a move by someone else fails the publish (S3 has no
  compare-and-swap, so run one deploy service per store).
"""

from __future__ import annotations

import json

from services.deploy.fleet import MANIFEST, POINTER, FleetTarget, check_version, emit
from services.deploy.package import build_manifest, open_source
from sigdl.core import __version__, lineage
from sigdl.core.errors import InputError
from sigdl.core.events import EventFn, ProgressEvent


def run_deploy(
    source: str,
    target: str,
    fleet: str,
    *,
    store_root: str | None = None,
    version: str | None = None,
    on_event: EventFn | None = None,
    retest_report: str | None = None,
) -> dict:
    """Package `source` for `target` and make it the current version of `fleet`; return what
    was published (URIs, manifest digest, metrics, lineage)."""
    ft = FleetTarget.at(store_root, fleet, target)
    if version is not None:
        check_version(version)
    with open_source(str(source), retest_report) as src, ft.lock():
        if src.manifest is not None and src.manifest.get("target") != target:
            raise InputError(
                f"package {src.uri!r} was built for target {src.manifest.get('target')!r}, "
                f"not {target!r}: deploy the run it came from instead"
            )
        pointer = ft.read_pointer()
        folders = ft.version_folders()
        chosen = version or ft.next_version(folders)
        manifest = build_manifest(src, fleet=fleet, target=target, version=chosen)
        unchanged = _unchanged(ft, pointer, manifest["content_sha256"], version)
        if unchanged is not None:
            emit(on_event, ProgressEvent.of("unchanged", version=pointer["version"]))
            return _result(ft, unchanged, pointer, "unchanged")
        if chosen in folders:
            raise InputError(
                f"version {chosen!r} of {fleet}/{target} already exists in {ft.root}: versions "
                "are immutable; publish under another version or roll back to it"
            )
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        digest = ft.upload_version(chosen, src.files, data, on_event)
        new_pointer = ft.swap_pointer(pointer, chosen, digest, "publish")
    emit(on_event, ProgressEvent.of("current", version=chosen, manifest_sha256=digest))
    result = _result(ft, manifest, new_pointer, "publish")
    result["mlflow"] = mark_deployed(manifest["lineage"], fleet, target)
    return result


def _unchanged(ft: FleetTarget, pointer: dict | None, content: str, version: str | None):
    """The current manifest when it already holds this content (and no other version was
    asked for), else None."""
    if pointer is None or version not in (None, pointer["version"]):
        return None
    current, _ = ft.read_manifest(pointer["version"])
    return current if current.get("content_sha256") == content else None


def rollback(
    fleet: str, target: str, store_root: str | None = None, to_version: str | None = None
) -> dict:
    """Point `current` back at `to_version` (default: the version current before this one),
    after reading that version back and checking every file against its manifest."""
    ft = FleetTarget.at(store_root, fleet, target)
    with ft.lock():
        pointer = ft.read_pointer()
        if pointer is None:
            raise InputError(f"nothing is published for {fleet}/{target} in {ft.root}")
        to_version = check_version(to_version or pointer.get("previous") or "")
        if to_version == pointer["version"]:
            raise InputError(f"version {to_version!r} is already current for {fleet}/{target}")
        manifest, digest = ft.verify_version(to_version)
        new_pointer = ft.swap_pointer(pointer, to_version, digest, "rollback")
    result = _result(ft, manifest, new_pointer, "rollback")
    result["mlflow"] = mark_deployed(manifest.get("lineage", {}), fleet, target)
    return result


def deployed_alias(fleet: str, target: str) -> str:
    # '_' cannot occur in fleet or target names, so the alias names exactly one pair
    return f"deployed_{fleet}_{target}"


def mark_deployed(lineage_ids: dict, fleet: str, target: str) -> dict | None:
    """Point the MLflow alias `deployed_<fleet>_<target>` at the registered model version the
    package came from (ARCHITECTURE.md: aliases mark what is deployed per target), and tag the
    version with its target. None when tracking is off, the package names no registered
    version, or that version lives in another tracking store. An MLflow failure is reported
    in the result, not raised: the package is already live."""
    name, version = lineage_ids.get("registered_model"), lineage_ids.get("model_version")
    tracking = lineage.open_lineage() if name and version else None
    if tracking is None or lineage_ids.get("mlflow_tracking_uri") != tracking.tracking_uri:
        return None
    alias = deployed_alias(fleet, target)
    try:
        tracking.client.set_registered_model_alias(name, alias, str(version))
        tracking.client.set_model_version_tag(name, str(version), lineage.TAG_TARGET, target)
    except Exception as exc:  # MlflowException, or the tracking server is down
        return {"registered_model": name, "version": str(version), "error": str(exc)[:300]}
    return {"registered_model": name, "version": str(version), "alias": alias}


def list_versions(fleet: str, target: str, store_root: str | None = None) -> list[dict]:
    """Every version folder of `fleet`/`target`, oldest first, with its manifest's figures;
    a folder without a manifest (an upload cut short by a crash) shows as incomplete."""
    ft = FleetTarget.at(store_root, fleet, target)
    pointer = ft.read_pointer() or {}
    rows = []
    for version, names in ft.version_folders().items():
        row: dict = {"version": version, "current": version == pointer.get("version")}
        if MANIFEST in names:
            manifest, digest = ft.read_manifest(version)
            row.update(complete=True, created=manifest.get("created"), manifest_sha256=digest,
                       content_sha256=manifest.get("content_sha256"),
                       metrics=manifest.get("metrics", {}))  # fmt: skip
        else:
            row["complete"] = False
        rows.append(row)
    return sorted(rows, key=lambda r: (r.get("created") or "", _number(r["version"])))


def _number(version: str) -> int:
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else -1


def _result(ft: FleetTarget, manifest: dict, pointer: dict, action: str) -> dict:
    """What a deploy or rollback did: `action` is publish, unchanged or rollback."""
    version = manifest["version"]
    return {
        "command": "deploy",
        "sigdl_version": __version__,
        "fleet": ft.fleet,
        "target": ft.target,
        "version": version,
        "action": action,
        "published": action == "publish",
        "store_root": ft.root,
        "package_uri": ft.uri(version) + "/",
        "manifest_uri": ft.uri(version, MANIFEST),
        "manifest_sha256": pointer["manifest_sha256"],
        "pointer_uri": ft.uri(POINTER),
        "previous_version": pointer.get("previous"),
        "content_sha256": manifest["content_sha256"],
        "files": manifest["files"],
        "metrics": manifest.get("metrics", {}),
        "lineage": manifest.get("lineage", {}),
        "mlflow": None,  # set by mark_deployed when an alias moved
    }


def summary(result: dict) -> str:
    """What `sigdl deploy` prints without --json."""
    where = f"{result['fleet']}/{result['target']} {result['version']}"
    head = {
        "publish": f"published {where} at {result['package_uri']}",
        "unchanged": f"unchanged: {where} already holds this package at {result['package_uri']}",
        "rollback": f"rolled back {where} at {result['package_uri']}",
    }[result["action"]]
    return (
        f"{head}\nmanifest sha256 {result['manifest_sha256']}\n"
        f"current: {result['version']} (previous: {result['previous_version'] or 'none'}) "
        f"in {result['pointer_uri']}"
    )

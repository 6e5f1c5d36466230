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
  The no-op holds only when the current version still verifies (digests, and its signature
  when a key is set); a tampered current version is replaced by a new one.
  Identical to an older version is still a new version: the history stays a plain log.
- Versions are immutable: an explicit `version` that exists already is refused (unless it is
  the current one with the same content: the no-op above). Roll back to reach an old one.
- Without `version`, the next `vN` counts every numbered folder in the store, so a number is
  never reused, not even one whose upload failed.
- A retest report is taken into the manifest (latency, fps, power, verdict) only when it was
  made for the same target; another target's report is refused. A failed retest verdict is
  recorded (`metrics.retest_passed`), not enforced: the gate before deploy decides.
- Rollback without a version returns to the pointer's `previous` (what was current before).
- With SIGDL_SIGNING_KEY set, the manifest is signed (Ed25519, sigdl/core/signing.py) and the
  `signature` is uploaded after it, before `current` moves; unset, the package is published
  unsigned (`signed_by: None`), which edge agents refuse. With a key set, a rollback to a
  version not signed by that key is refused: its agents would refuse it too.
- When the package names a registered MLflow version in the tracking store in force, the alias
  `deployed_<fleet>_<target>` follows `current` (publish and rollback); an MLflow failure is
  reported in the result's `mlflow`, not raised, since the package is already live.
- With `canary=True` the new version goes to the `canary` pointer, which only canary agents
  follow, and `current` stays; services/deploy/canary.py promotes it or removes it. A canary
  needs a current version (what the rest of the fleet, and a rolled back canary, runs) and
  waits for the one in progress to be promoted or rolled back.
- Publishers of one fleet/target are serialized within a process; across processes, the pointer
  is re-read just before the swap and a move by someone else fails the publish (S3 has no
  compare-and-swap, so run one deploy service per store).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.deploy.fleet import (
    AGENTS,
    CANARY,
    MANIFEST,
    POINTER,
    SIGNATURE,
    FleetTarget,
    NotPublishedError,
    check_name,
    check_version,
    emit,
)
from services.deploy.package import build_manifest, open_source
from sigdl.core import __version__, lineage, settings, signing, store
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
    canary: bool = False,
) -> dict:
    """Package `source` for `target` and make it the current version of `fleet` (with
    `canary`, the version its canary agents try first); return what was published (URIs,
    manifest digest, metrics, lineage)."""
    ft = FleetTarget.at(store_root, fleet, target)
    if version is not None:
        check_version(version)
    key = signing_key()  # a bad key fails before anything is read or written
    with open_source(str(source), retest_report) as src, ft.lock():
        if src.manifest is not None and src.manifest.get("target") != target:
            raise InputError(
                f"package {src.uri!r} was built for target {src.manifest.get('target')!r}, "
                f"not {target!r}: deploy the run it came from instead"
            )
        pointer = ft.read_pointer()
        if canary:
            _check_canary_possible(ft, pointer)
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
        signature = signing.sign(data, key) if key is not None else None
        digest = ft.upload_version(chosen, src.files, data, on_event, signature)
        if canary:
            tried = ft.write_canary(pointer, chosen, digest)
            new_pointer = {"manifest_sha256": digest, "previous": tried["base"]}
        else:
            new_pointer = ft.swap_pointer(pointer, chosen, digest, "publish")
    emit(on_event, ProgressEvent.of(CANARY if canary else POINTER, version=chosen,
                                    manifest_sha256=digest))  # fmt: skip
    result = _result(ft, manifest, new_pointer, "canary" if canary else "publish")
    result["signed_by"] = signing.key_id(key.public_key()) if key is not None else None
    if canary:  # the alias marks what the fleet runs: it moves when the canary is promoted
        result["pointer_uri"] = ft.uri(CANARY)
    else:
        result["mlflow"] = mark_deployed(manifest["lineage"], fleet, target)
    return result


def _check_canary_possible(ft: FleetTarget, pointer: dict | None) -> None:
    if pointer is None:
        raise InputError(
            f"a canary of {ft.fleet}/{ft.target} needs a current version to fall back to: "
            "deploy one without --canary first"
        )
    running = ft.read_canary()
    if running is not None:
        raise InputError(
            f"canary {running['version']!r} of {ft.fleet}/{ft.target} is in progress: promote "
            "it or roll it back first"
        )


def preview_manifest(
    source: str,
    target: str,
    fleet: str,
    store_root: str | None = None,
    version: str | None = None,
    retest_report: str | None = None,
) -> tuple[str, dict]:
    """The store root and the manifest `run_deploy` would publish now (`--dry-run`), writing
    nothing."""
    ft = FleetTarget.at(store_root, fleet, target)
    if version is not None:
        check_version(version)
    with open_source(str(source), retest_report) as src:
        chosen = version or ft.next_version()
        return ft.root, build_manifest(src, fleet=fleet, target=target, version=chosen)


def signing_key() -> Ed25519PrivateKey | None:
    """The key SIGDL_SIGNING_KEY names, or None: an unsigned package, which edge agents refuse
    (a local `sigdl run` needs no key; a fleet does)."""
    path = settings.SIGDL_SIGNING_KEY.get()
    return signing.load_private_key(path) if path is not None else None


def _unchanged(ft: FleetTarget, pointer: dict | None, content: str, version: str | None):
    """The current manifest when it already holds this content (and no other version was
    asked for), else None. The current version is checked first (every file's sha256, and its
    signature when a key is set): a damaged or tampered one is replaced, not kept."""
    if pointer is None or version not in (None, pointer["version"]):
        return None
    current, _ = ft.read_manifest(pointer["version"])
    if current.get("content_sha256") != content:
        return None
    try:
        ft.verify_version(pointer["version"])
        check_signed(ft, pointer["version"])
    except InputError:  # StoreError is one too: a file changed or missing in the store
        if version is not None:
            raise
        return None
    return current


def rollback(
    fleet: str, target: str, store_root: str | None = None, to_version: str | None = None
) -> dict:
    """Point `current` back at `to_version` (default: the version current before this one),
    after reading that version back and checking every file against its manifest."""
    ft = FleetTarget.at(store_root, fleet, target)
    with ft.lock():
        pointer = ft.read_pointer()
        if pointer is None:
            raise NotPublishedError(f"nothing is published for {fleet}/{target} in {ft.root}")
        to_version = check_version(to_version or pointer.get("previous") or "")
        if to_version == pointer["version"]:
            raise InputError(f"version {to_version!r} is already current for {fleet}/{target}")
        manifest, digest = ft.verify_version(to_version)
        check_signed(ft, to_version)
        new_pointer = ft.swap_pointer(pointer, to_version, digest, "rollback")
    result = _result(ft, manifest, new_pointer, "rollback")
    result["mlflow"] = mark_deployed(manifest.get("lineage", {}), fleet, target)
    return result


def check_signed(ft: FleetTarget, version: str) -> None:
    """With a signing key set, refuse to make current a version its agents would refuse: one
    unsigned, or signed by another key than this deploy's."""
    key = signing_key()
    if key is None:
        return
    manifest = store.get_bytes(ft.uri(version, MANIFEST))
    try:
        doc = store.get_bytes(ft.uri(version, SIGNATURE))
    except store.ArtifactNotFoundError:
        raise InputError(
            f"version {version!r} of {ft.fleet}/{ft.target} is unsigned: its agents would refuse "
            "it; publish it again (signed) instead"
        ) from None
    try:
        signing.verify(manifest, doc, key.public_key())
    except signing.SignatureError as exc:
        raise InputError(f"version {version!r} of {ft.fleet}/{ft.target}: {exc}") from None


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
        row: dict = {"version": version, "current": version == pointer.get("version"),
                     "signed": SIGNATURE in names}  # fmt: skip
        if MANIFEST in names:
            manifest, digest = ft.read_manifest(version)
            row.update(complete=True, created=manifest.get("created"), manifest_sha256=digest,
                       content_sha256=manifest.get("content_sha256"),
                       metrics=manifest.get("metrics", {}))  # fmt: skip
        else:
            row["complete"] = False
        rows.append(row)
    return sorted(rows, key=lambda r: (r.get("created") or "", _number(r["version"])))


def fleet_status(fleet: str, store_root: str | None = None) -> dict:
    """Every target of `fleet`: its versions, which is current, and what each edge agent last
    reported (`<store>/fleets/<fleet>/_agents/<target>/<agent-id>.json`, services/edge/)."""
    root = (store.as_uri(store_root) if store_root else store.local_artifact_root()).rstrip("/")
    base = f"{root}/fleets/{check_name(fleet, 'fleet')}"
    found: dict[str, list[str]] = {}
    for uri in store.list_uris(base):
        first, _, rest = uri[len(base) + 1 :].partition("/")
        if first == AGENTS:
            target, _, name = rest.partition("/")
            if name.endswith(".json") and "/" not in name:
                found.setdefault(target, []).append(uri)
        else:
            found.setdefault(first, [])
    if not found:
        raise InputError(f"fleet {fleet!r} has nothing published in {root}")
    targets_out = []
    for target in sorted(found):
        ft = FleetTarget.at(root, fleet, target)
        pointer = ft.read_pointer() or {}
        agents = [_agent_row(uri, pointer.get("version")) for uri in sorted(found[target])]
        targets_out.append({"target": target, "current": pointer.get("version"),
                            "versions": list_versions(fleet, target, root),
                            "agents": agents})  # fmt: skip
    return {"command": "fleet status", "fleet": fleet, "store_root": root,
            "targets": targets_out}  # fmt: skip


def _agent_row(uri: str, current: str | None) -> dict:
    """An agent's own report, with how old it is and whether it serves `current`."""
    try:
        report = json.loads(store.get_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError, store.StoreError) as exc:
        return {"agent_id": uri.rsplit("/", 1)[-1][: -len(".json")], "error": str(exc)[:200]}
    if not isinstance(report, dict):
        return {"agent_id": uri.rsplit("/", 1)[-1][: -len(".json")], "error": "not an object"}
    try:
        age = (datetime.now(UTC) - datetime.fromisoformat(report["updated"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        age = None
    return {**report, "age_s": None if age is None else round(age, 1),
            "on_current": report.get("version") == current}  # fmt: skip


def status_summary(status: dict) -> str:
    """What `sigdl fleet status` prints without --json."""
    lines = [f"fleet {status['fleet']} in {status['store_root']}"]
    for t in status["targets"]:
        versions = ", ".join(
            f"{v['version']}{'*' if v['current'] else ''}{'' if v.get('signed') else ' (unsigned)'}"
            for v in t["versions"]
        )
        lines.append(f"  {t['target']}: current {t['current'] or 'none'}; versions {versions}")
        for a in t["agents"]:
            if "error" in a:
                lines.append(f"    agent {a['agent_id']}: unreadable status ({a['error']})")
                continue
            lat = a.get("latency_ms") or {}
            line = (f"    agent {a['agent_id']}: {a.get('health')} {a.get('version') or '-'}"
                    f" p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms, {a.get('requests')} "
                    f"requests, reported {a.get('age_s')} s ago")  # fmt: skip
            refusal = a.get("last_refusal")
            if refusal:
                line += f"; refused {refusal.get('version')}: {refusal.get('reason')}"
            lines.append(line)
            if a.get("data"):
                lines.append(f"      data: {data_summary(a['data'])}")
    return "\n".join(lines)


def data_summary(data: dict) -> str:
    """An agent's acquired samples (services/edge/samples.py), as `sigdl fleet status` shows."""
    line = (f"kept {data.get('kept')} ({data.get('hard')} hard, {data.get('labelled')} labelled),"
            f" uploaded to edge {data.get('uploaded_edge')}, synced to cloud "
            f"{data.get('synced_cloud')}, pending {data.get('pending')} "
            f"({data.get('pending_bytes')} bytes), rejected {data.get('rejected')}, dropped "
            f"{data.get('dropped')}")  # fmt: skip
    error = data.get("last_upload_error")
    if error:
        line += f"; upload to {error.get('destination')} failing: {error.get('reason')}"
    return line


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
        "published": action in ("publish", "canary"),
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
        "signed_by": None,  # on a publish: the id of the key that signed the manifest
        "mlflow": None,  # set by mark_deployed when an alias moved
    }


def summary(result: dict) -> str:
    """What `sigdl deploy` prints without --json."""
    where = f"{result['fleet']}/{result['target']} {result['version']}"
    head = {
        "publish": f"published {where} at {result['package_uri']}",
        "unchanged": f"unchanged: {where} already holds this package at {result['package_uri']}",
        "rollback": f"rolled back {where} at {result['package_uri']}",
        "canary": f"published {where} as the canary at {result['package_uri']}",
    }[result["action"]]
    if result["action"] in ("publish", "canary"):
        signed = result.get("signed_by")
        unsigned = "unsigned (SIGDL_SIGNING_KEY is not set): edge agents will refuse it"
        head += f"\nsigned by key {signed}" if signed else f"\n{unsigned}"
    if result["action"] == "canary":
        return (
            f"{head}\nmanifest sha256 {result['manifest_sha256']}\n"
            f"canary: {result['version']} (current stays {result['previous_version']}) in "
            f"{result['pointer_uri']}; `sigdl fleet promote` decides"
        )
    return (
        f"{head}\nmanifest sha256 {result['manifest_sha256']}\n"
        f"current: {result['version']} (previous: {result['previous_version'] or 'none'}) "
        f"in {result['pointer_uri']}"
    )

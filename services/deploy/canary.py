"""Canary releases of a fleet: a version the canary agents run first, promoted or rolled back.

    run_deploy("runs/b", "arm-cortex-a53", "lab", canary=True)     # `canary` -> v3, current v2
    decision = promote_canary("lab", "arm-cortex-a53", deadline_s=300, min_healthy=2)
    decision.action   # 'promoted' (current -> v3) or 'rolled_back' (canary removed), and why

Canary agents (SIGDL_AGENT_CANARY, `sigdl edge-agent --canary`; on a cluster the canary
Deployment of services/deploy/rollout.py, a fraction of the fleet's replicas) follow the
`canary` pointer while it exists and `current` otherwise; every other agent follows `current`
only. `promote_canary` reads the agents' own reports (`<store>/fleets/<fleet>/_agents/<target>/`):

- promoted when `min_healthy` agents report SERVING on the canary's exact manifest, written after
  the canary began; `current` moves to it (action `promote` in its history), then the canary
  pointer goes, so no agent ever flips back and forth;
- rolled back as soon as an agent reports that it refused the canary (a digest or signature that
  does not match is not going to heal), or when the deadline passes short of `min_healthy`, or
  when `current` moved during the canary (someone published: the canary was tried against
  another base). Rolling back removes the canary pointer: canary agents return to `current` at
  their next poll, and the others never left it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

from services.deploy.fleet import (
    AGENTS,
    CANARY,
    ConcurrentPublishError,
    FleetTarget,
    NotPublishedError,
    emit,
)
from services.deploy.stage import check_signed, mark_deployed
from sigdl.core import store
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent


@dataclass(frozen=True)
class CanaryDecision:
    """What `promote_canary` decided, and on what evidence."""

    fleet: str
    target: str
    version: str  # the canary's version
    action: str  # 'promoted' or 'rolled_back'
    reason: str  # one line: why
    current: str | None  # the version `current` names afterwards
    healthy_agents: list[str] = field(default_factory=list)  # SERVING on the canary
    refused_by: list[str] = field(default_factory=list)  # agents that refused the canary
    waited_s: float = 0.0
    mlflow: dict | None = None  # the deployed alias, moved on promotion (stage.mark_deployed)

    def to_dict(self) -> dict:
        return {"command": "fleet promote", **asdict(self)}


def promote_canary(
    fleet: str,
    target: str,
    store_root: str | None = None,
    *,
    deadline_s: float = 300.0,
    min_healthy: int = 1,
    poll_s: float = 2.0,
    on_event: EventFn | None = None,
) -> CanaryDecision:
    """Wait up to `deadline_s` for `min_healthy` agents to serve the canary; promote it to
    `current` if they do, else remove it (canary agents return to `current`)."""
    if not math.isfinite(deadline_s) or deadline_s < 0:
        raise InputError(f"deadline {deadline_s} s: expected a number of seconds >= 0")
    if min_healthy < 1:
        raise InputError(f"min_healthy {min_healthy}: expected at least 1 agent")
    if not math.isfinite(poll_s) or poll_s <= 0:
        raise InputError(f"poll interval {poll_s} s: expected a positive number")
    ft = FleetTarget.at(store_root, fleet, target)
    canary = ft.read_canary()
    if canary is None:
        raise NotPublishedError(f"no canary is in progress for {fleet}/{target} in {ft.root}")
    started, deadline = time.monotonic(), time.monotonic() + deadline_s
    while True:
        healthy, refused = canary_agents(ft, canary)
        waited = round(time.monotonic() - started, 2)
        if len(healthy) >= min_healthy:
            return _promote(ft, canary, healthy, waited)
        if refused:
            agent, reason = next(iter(refused.items()))
            why = f"agent {agent} refused {canary['version']}: {reason}"
            return _roll_back(ft, canary, why, healthy, sorted(refused), waited)
        if time.monotonic() >= deadline:
            why = (f"{len(healthy)} of the {min_healthy} agents needed reported healthy on "
                   f"{canary['version']} within {deadline_s:g} s")  # fmt: skip
            return _roll_back(ft, canary, why, healthy, [], waited)
        emit(on_event, ProgressEvent.of(CANARY, version=canary["version"], healthy=len(healthy),
                                        needed=min_healthy))  # fmt: skip
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def canary_agents(ft: FleetTarget, canary: dict) -> tuple[list[str], dict[str, str]]:
    """The agents serving the canary's exact manifest, and those that refused it (id: reason),
    counting only reports written since the canary began."""
    since = _when(canary.get("created"))
    healthy, refused = [], {}
    base = f"{ft.root}/fleets/{ft.fleet}/{AGENTS}/{ft.target}"
    for uri in sorted(store.list_uris(base)):
        report = _report(uri)
        if report is None or since is None or (_when(report.get("updated")) or since) < since:
            continue
        agent = str(report.get("agent_id") or uri.rsplit("/", 1)[-1].removesuffix(".json"))
        on_canary = (report.get("version"), report.get("manifest_sha256")) == (
            canary["version"],
            canary["manifest_sha256"],
        )
        if on_canary and report.get("health") == "SERVING":
            healthy.append(agent)
        refusal = report.get("last_refusal")
        if (
            isinstance(refusal, dict)
            and refusal.get("version") == canary["version"]
            and (_when(refusal.get("at")) or since) >= since
        ):
            refused[agent] = one_line(str(refusal.get("reason")), 300)
    return healthy, refused


def _promote(ft: FleetTarget, canary: dict, healthy: list[str], waited: float) -> CanaryDecision:
    version = canary["version"]
    with ft.lock():
        if ft.read_canary() != canary:
            raise ConcurrentPublishError(
                f"the canary of {ft.fleet}/{ft.target} changed while it was being decided; retry"
            )
        pointer = ft.read_pointer()
        now_current = pointer["version"] if pointer else None
        if now_current != canary.get("base"):
            why = (f"current moved from {canary.get('base')!r} to {now_current!r} during the "
                   f"canary: {version} was tried against another version")  # fmt: skip
            return _roll_back(ft, canary, why, healthy, [], waited, locked=True)
        try:
            manifest, digest = ft.verify_version(version)
            check_signed(ft, version)
            if digest != canary["manifest_sha256"]:
                raise InputError(f"{version}'s manifest changed in the store during the canary")
        except InputError as exc:  # StoreError too: a file changed under the canary
            why = f"{version} no longer verifies: {one_line(str(exc), 300)}"
            return _roll_back(ft, canary, why, healthy, [], waited, locked=True)
        ft.swap_pointer(pointer, version, digest, "promote")
        ft.remove_canary()  # after the swap: canary agents find the same version in `current`
    reason = f"{len(healthy)} agent(s) reported healthy on {version}: {', '.join(healthy)}"
    return CanaryDecision(
        ft.fleet, ft.target, version, "promoted", reason, version, healthy, [], waited,
        mark_deployed(manifest.get("lineage", {}), ft.fleet, ft.target),
    )  # fmt: skip


def _roll_back(
    ft: FleetTarget,
    canary: dict,
    reason: str,
    healthy: list[str],
    refused: list[str],
    waited: float,
    locked: bool = False,
) -> CanaryDecision:
    if locked:
        _remove_if_same(ft, canary)
    else:
        with ft.lock():
            _remove_if_same(ft, canary)
    pointer = ft.read_pointer()
    current = pointer["version"] if pointer else None
    return CanaryDecision(ft.fleet, ft.target, canary["version"], "rolled_back", reason,
                          current, healthy, refused, waited)  # fmt: skip


def _remove_if_same(ft: FleetTarget, canary: dict) -> None:
    if ft.read_canary() != canary:
        raise ConcurrentPublishError(
            f"the canary of {ft.fleet}/{ft.target} changed while it was being decided; retry"
        )
    ft.remove_canary()


def summary(decision: CanaryDecision) -> str:
    """What `sigdl fleet promote` prints without --json."""
    head = {"promoted": "promoted", "rolled_back": "rolled back"}[decision.action]
    return (
        f"{head} canary {decision.fleet}/{decision.target} {decision.version} after "
        f"{decision.waited_s:g} s: {decision.reason}\ncurrent: {decision.current}"
    )


def _report(uri: str) -> dict | None:
    try:
        report = json.loads(store.get_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError, store.StoreError):
        return None  # an unreadable report is no evidence either way
    return report if isinstance(report, dict) else None


def _when(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None

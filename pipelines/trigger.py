"""The retraining trigger that closes the loop: when a fleet's target has collected enough new
labelled samples (Sedna's `num_samples >= N`), start a retraining run where the data lives,
warm-started from the deployed version, with every labelled sample added to training; its
result goes through the same gate as any run before it reaches the fleet.

The edge agents upload their samples to the edge site's store (services/edge/samples.py:
`<edge>/samples/<fleet>/<target>/<sha256>.npy` and `.json`). `sigdl fleet retrain` runs at the
edge site, with that store's credentials; private samples never leave it. Each call:

1. lists the labelled samples there and compares them with the trigger's state
   (`<edge>/retrain/<fleet>/<target>/state.json`: the samples every earlier run learnt from);
2. below the threshold, says how many are new and stops;
3. else finds the version the fleet serves (what most agents report serving, its signature
   checked with SIGDL_VERIFY_KEY when set; before any report, `current`), writes a sample set
   (sigdl/core/sampleset.py) naming every labelled sample by key and sha256
   (`<edge>/retrain/<fleet>/<target>/<run id>/samples.json`), finds the dense checkpoint
   that version was compressed from (its manifest's lineage: a pipeline
   candidate's `baseline.json`, or a `sigdl train` output), and starts the loop
   (pipelines/controller.py) for this target with `init_checkpoint` and `extra_samples` set:
   training fine-tunes those weights on the data set plus the samples, and the candidates are
   compressed, retested and gated as usual; a candidate that passes is deployed to the fleet;
4. records the run in the state (which set, how many samples, the version it started from,
   whether it passed and what it deployed). The next run waits for N samples newer than that.

Lineage: the training report's `inputs.edge_samples` ({uri, sha256, count, private}) and its
MLflow tags (sigdl.edge_samples_sha256, sigdl.init_checkpoint) name the data and the weights.

    result = retrain_if_due(TriggerConfig("lab", "arm-cortex-a53", "s3://edge/lab",
                                          "s3://fleet", threshold=50, loop=LoopConfig()), start)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from pipelines.controller import LoopConfig, LoopResult, new_run_id
from services.deploy.client import deployed_version
from sigdl.core import settings, store
from sigdl.core.errors import InputError, short
from sigdl.core.sampleset import make_set

STATE_VERSION = 1
CANDIDATE_SOURCE = re.compile(r"^(?P<run>.+)/candidates/[^/]+/compress/?$")


@dataclass(frozen=True)
class TriggerConfig:
    fleet: str
    target: str
    samples_uri: str  # the edge site's store prefix the agents upload to (SIGDL_EDGE_STORE)
    store: str  # the fleet store: fleets/<fleet>/<target>/current (the agents' --store)
    threshold: int  # new labelled samples that start a retraining run
    loop: LoopConfig = field(default_factory=LoopConfig)  # the retraining run's options

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int) or not 1 <= self.threshold <= 10_000_000:
            raise InputError(f"threshold {short(self.threshold)}: expected an integer >= 1")
        for name in ("samples_uri", "store"):
            if not getattr(self, name):
                raise InputError(f"{name}: expected a store URI (file:///... or s3://...)")

    @property
    def state_prefix(self) -> str:
        return f"{self.samples_uri.rstrip('/')}/retrain/{self.fleet}/{self.target}"


@dataclass
class TriggerResult:
    fleet: str
    target: str
    labelled: int  # labelled samples in the edge store
    new: int  # of them, not learnt from by an earlier run
    threshold: int
    started: bool  # a retraining run was started
    run: dict | None = None  # what the state records of it

    def to_json(self) -> dict:
        return {"command": "fleet retrain", **asdict(self)}


def labelled_samples(samples_uri: str, fleet: str, target: str) -> list[dict]:
    """Every labelled sample of `fleet`/`target` in the edge store, oldest first: its record
    (services/edge/samples.py) as uploaded. Hard examples without a label are left out."""
    prefix = f"{samples_uri.rstrip('/')}/samples/{fleet}/{target}/"
    found = []
    for uri in store.list_uris(prefix):
        if not uri.endswith(".json"):
            continue
        try:
            record = json.loads(store.get_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # an upload in progress, or not ours: the sample set would refuse it
        label = record.get("label") if isinstance(record, dict) else None
        if record.get("source") == "label" and isinstance(label, int):
            found.append(record)
    return sorted(found, key=lambda r: (str(r.get("time")), str(r.get("sha256"))))


def read_state(cfg: TriggerConfig) -> dict:
    uri = f"{cfg.state_prefix}/state.json"
    if not store.exists(uri):
        return {"state_version": STATE_VERSION, "learnt": [], "runs": []}
    state = json.loads(store.get_bytes(uri))
    if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
        raise InputError(f"{uri}: not a retraining state of version {STATE_VERSION}")
    return state


def write_state(cfg: TriggerConfig, state: dict) -> None:
    data = (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()
    store.put_bytes(f"{cfg.state_prefix}/state.json", data)  # one put: all or nothing


def dense_checkpoint(manifest: dict) -> str:
    """The dense checkpoint a deployed package was made from, by its manifest's lineage."""
    lineage = manifest.get("lineage") or {}
    source = str(lineage.get("source") or "")
    if lineage.get("stage") == "train" and source:
        return source  # a `sigdl train` output deployed as it is
    found = CANDIDATE_SOURCE.match(source)
    if found:
        baseline = f"{found.group('run')}/baseline.json"
        if store.exists(baseline):
            return json.loads(store.get_bytes(baseline))["checkpoint_uri"]
    raise InputError(
        f"version {manifest.get('version')}: its source {short(source)} is neither a pipeline "
        "candidate nor a `sigdl train` output, so the weights to start from are unknown"
    )


def retraining_loop(cfg: TriggerConfig, checkpoint: str, sample_set: str, manifest: dict,
                    run_id: str) -> LoopConfig:  # fmt: skip
    """The loop options of a retraining run: the deployed model and data set, this target only,
    published to the same fleet and store, training warm-started and given the samples."""
    loop = cfg.loop
    train = {**loop.train, "init_checkpoint": checkpoint, "extra_samples": sample_set}
    model, dataset = manifest.get("model") or loop.model, manifest.get("dataset") or loop.dataset
    return replace(loop, model=model, dataset=dataset, targets=[cfg.target], fleet=cfg.fleet,
                   store=cfg.store, train=train, from_checkpoint=None, nproc=1,
                   out=f"{loop.out}/{run_id}" if loop.out else None)  # fmt: skip


def retrain_if_due(cfg: TriggerConfig, start: Callable[[LoopConfig], LoopResult],
                   say: Callable[[str], None] = lambda line: None) -> TriggerResult:  # fmt: skip
    """One look at the edge store; a retraining run (`start`) when the threshold is passed."""
    samples = labelled_samples(cfg.samples_uri, cfg.fleet, cfg.target)
    state = read_state(cfg)
    learnt = set(state["learnt"])
    new = [s for s in samples if s["sha256"] not in learnt]
    result = TriggerResult(cfg.fleet, cfg.target, len(samples), len(new), cfg.threshold, False)
    if len(new) < cfg.threshold:
        say(f"{cfg.fleet}/{cfg.target}: {len(new)} new labelled samples of {cfg.threshold}: "
            "waiting")  # fmt: skip
        return result
    current = deployed_version(cfg.store, cfg.fleet, cfg.target, settings.SIGDL_VERIFY_KEY.get())
    checkpoint = dense_checkpoint(current["manifest"])
    run_id = new_run_id()
    entries = [{"key": s["key"], "sha256": s["sha256"], "label": s["label"],
                "private": bool(s.get("private", True))} for s in samples]  # fmt: skip
    set_uri = f"{cfg.state_prefix}/{run_id}/samples.json"
    data = make_set(cfg.fleet, cfg.target, cfg.samples_uri, entries)
    store.put_bytes(set_uri, data)
    private = sum(e["private"] for e in entries)
    say(f"{cfg.fleet}/{cfg.target}: {len(new)} new labelled samples (threshold "
        f"{cfg.threshold}): retraining from {current['version']} (served by "
        f"{current['served_by']} agents) on {len(entries)} samples "
        f"({private} private), set {set_uri}")  # fmt: skip
    loop = retraining_loop(cfg, checkpoint, set_uri, current["manifest"], run_id)
    started = time.time()
    outcome = start(loop)
    deployed = outcome.deployed.get(cfg.target)
    run = {
        "run_id": run_id, "pipeline_run_id": outcome.pipeline_run_id, "started": started,
        "seconds": round(time.time() - started, 1), "sample_set": set_uri,
        "samples": len(entries), "new": len(new), "private": private,
        "from_version": current["version"], "from_checkpoint": checkpoint,
        "passed": outcome.passed, "deployed_version": (deployed or {}).get("version"),
        "out": outcome.out,
    }  # fmt: skip
    state["learnt"] = sorted(learnt | {e["sha256"] for e in entries})
    state["runs"].append(run)
    write_state(cfg, state)
    result.started, result.run = True, run
    return result


def summary(result: TriggerResult) -> str:
    """What `sigdl fleet retrain` prints."""
    head = (f"{result.fleet}/{result.target}: {result.new} new of {result.labelled} labelled "
            f"samples (threshold {result.threshold})")  # fmt: skip
    if not result.started:
        return f"{head}: no retraining yet"
    run = result.run
    outcome = (f"passed the gate, deployed {run['deployed_version']}" if run["passed"]
               else "did not pass the gate: the fleet keeps " + run["from_version"])  # fmt: skip
    return (f"{head}: retrained from {run['from_version']} on {run['samples']} samples "
            f"({run['private']} private) in {run['seconds']:.0f} s; {outcome}\n"
            f"sample set: {run['sample_set']}\nrun: {run['out']}")  # fmt: skip

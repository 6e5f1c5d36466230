"""The CICD pipeline on a Kubeflow Pipelines cluster (`sigdl pipeline submit`).

`submit` starts one run of `pipelines/cicd.py` (iteration 1: every recipe for every target) and
returns at once; with `iterate=True` it drives the loop of `pipelines/controller.py` with
`ClusterRunner`, which starts each iteration's run and waits until it has ended. The
components find the services, S3 and MLflow through the chart's ConfigMaps and Secret, so the
runs get the services address "" and must write to S3: `runs_uri` in the config is required.

    kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80
    echo 'runs_uri: s3://sigdl/runs/lenet-1' > loop.yaml
    sigdl pipeline submit --host http://localhost:8080 --config loop.yaml             # one run
    sigdl pipeline submit --host http://localhost:8080 --config loop.yaml --iterate   # the loop

With `--iterate` this machine reads every run's `verdict.json` itself: its SIGDL_S3_* settings
must reach the same S3 store as the cluster's (the loop's report is written under `out`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import kfp
from kfp_server_api import ApiException
from urllib3.exceptions import MaxRetryError

from pipelines.cicd import cicd_pipeline
from pipelines.controller import (
    LoopConfig,
    first_candidates,
    new_run_id,
    run_arguments,
    run_loop,
    run_uri_of,
)
from sigdl.core import store
from sigdl.core.errors import InputError

CONNECT_TIMEOUT_S = 10.0  # a host that does not accept a connection in this time is unreachable
RUN_TIMEOUT_S = 12 * 3600.0  # one iteration: training a large model takes hours, not days
POLL_S = 5.0  # between two looks at a running run's state
# a run in one of these states has ended (kfp 2.17's own wait lacks CANCELED and waits forever)
ENDED_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "ERROR", "CANCELED"})
CLUSTER_URI_KEYS = ("runs_uri", "from_checkpoint", "store")  # read by pods: must be s3://


class ClusterRunner:
    """Runs one iteration as a Kubeflow Pipelines run and waits until it has ended.

    A run that ends FAILED or ERROR is no exception here: its exit handler wrote
    `verdict.json` all the same, and the controller reads the verdict from there."""

    def __init__(
        self,
        client: kfp.Client,
        experiment: str,
        timeout_s: float = RUN_TIMEOUT_S,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.experiment = experiment  # Kubeflow experiment; created when missing
        self.timeout_s = timeout_s  # the longest one run may take
        self.on_line = on_line or (lambda line: None)
        self.run_ids: list[str] = []  # kfp's run ids, one per iteration, in order

    def run(self, arguments: dict) -> None:
        run_id = self.start(arguments)
        state = self.wait(run_id)
        self.on_line(f"iteration {arguments['iteration']}: kfp run {run_id} ended {state}")

    def start(self, arguments: dict) -> str:
        """Submit one run; return kfp's run id. The links kfp prints go to `on_line`."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # stdout is for --json
            started = self.client.create_run_from_pipeline_func(
                cicd_pipeline,
                arguments=arguments,
                run_name=arguments["pipeline_run_id"],
                experiment_name=self.experiment,
            )
        for line in printed.getvalue().splitlines():
            self.on_line(line)
        self.run_ids.append(started.run_id)
        return started.run_id

    def wait(self, run_id: str) -> str:
        """Poll the run until it has ended; return its state."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            state = str(self.client.get_run(run_id).state or "").upper()
            if state in ENDED_STATES:
                return state
            if time.monotonic() > deadline:
                raise InputError(
                    f"kfp run {run_id} did not end within {self.timeout_s:.0f} s "
                    f"(still {state or 'PENDING'}): see it in the Kubeflow UI"
                )
            time.sleep(POLL_S)


def submit(
    host: str,
    config_path: str | None,
    *,
    iterate: bool,
    experiment: str,
    on_line: Callable[[str], None] | None = None,
) -> dict:
    """Submit iteration 1 and return its ids, or (`iterate`) run the whole loop on the cluster
    and return the loop's summary with `passed`."""
    say = on_line or (lambda line: None)
    cfg = LoopConfig.from_file(config_path) if config_path else LoopConfig()
    check_cluster_config(cfg, config_path)
    client = connect(host)
    runner = ClusterRunner(client, experiment, on_line=say)
    with _api_errors(host):
        if not iterate:
            return _submit_first(cfg, runner, host)
        result = run_loop(cfg, runner, "", on_line=say)
    return {
        **result.to_json(),
        "command": "pipeline submit",
        "host": host,
        "kfp_run_ids": runner.run_ids,
    }


def _submit_first(cfg: LoopConfig, runner: ClusterRunner, host: str) -> dict:
    """Iteration 1 with the same arguments the controller's first run gets; no waiting."""
    run_id_base = new_run_id()
    run_uri = run_uri_of(cfg, Path("."), run_id_base, 1)
    arguments = run_arguments(
        cfg,
        run_id_base,
        1,
        run_uri,
        [c.to_json() for c in first_candidates(cfg)],
        cfg.targets,
        store.as_uri(cfg.from_checkpoint) if cfg.from_checkpoint else "",
    )
    pipeline_run_id = arguments["pipeline_run_id"]
    run_id = runner.start(arguments)
    return {"run_id": run_id, "pipeline_run_id": pipeline_run_id, "run_uri": run_uri, "host": host}


def check_cluster_config(cfg: LoopConfig, config_path: str | None = None) -> None:
    """Every URI a pod reads must be on S3: a cluster's pods cannot see this machine's disk."""
    where = f"--config {config_path!r}" if config_path else "the default config (no --config)"
    for key in CLUSTER_URI_KEYS:
        value = getattr(cfg, key)
        if value is None and key != "runs_uri":
            continue  # optional: the cluster's defaults
        if not isinstance(value, str) or not value.startswith("s3://"):
            raise InputError(
                f"{where}: {key}={value!r}: expected an s3://bucket/prefix URI "
                "(a cluster's pods cannot read this machine's disk)"
            )
        store.parse_s3_uri(value, object_required=False)  # a bad bucket name, said here


def connect(host: str) -> kfp.Client:
    """A client of the Kubeflow Pipelines API at `host`, or one InputError line saying why not."""
    parts = urllib.parse.urlsplit(host)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is no number
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise InputError(f"--host {host!r}: expected a URL like http://localhost:8080")
    # kfp.Client waits for a connection without any timeout: try one ourselves first
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:  # refused, unknown name (socket.gaierror), no answer (TimeoutError)
        reason = (
            f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
            if isinstance(exc, TimeoutError)
            else exc.strerror or str(exc)
        )
        raise InputError(f"cannot reach Kubeflow Pipelines at {host!r}: {reason}") from None
    with _api_errors(host), _quiet_client():
        try:
            return kfp.Client(host=host)
        except TimeoutError:  # its health check failed five times, 5 s apart
            raise InputError(
                f"{host!r} answers, but not as the Kubeflow Pipelines API "
                "(/apis/v2beta1/healthz failed)"
            ) from None


@contextlib.contextmanager
def _api_errors(host: str) -> Iterator[None]:
    """The API's failures as one line naming the host, never a traceback."""
    try:
        yield
    except MaxRetryError as exc:  # kfp_server_api's transport: connection or TLS failures
        raise InputError(
            f"cannot reach Kubeflow Pipelines at {host!r}: {_one_line(str(exc.reason))}"
        ) from None
    except ApiException as exc:  # the API answered with an HTTP error
        raise InputError(
            f"Kubeflow Pipelines at {host!r} answered HTTP {exc.status} "
            f"{exc.reason}{_api_message(exc)}"
        ) from None


def _api_message(exc: ApiException) -> str:
    """The API's own message (a JSON body's `message`), else nothing: an HTML page says less."""
    try:
        body = json.loads(exc.body or "")
    except (ValueError, TypeError):
        return ""
    if isinstance(body, dict) and body.get("message"):
        return f": {_one_line(str(body['message']))}"
    return ""


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _NoHealthzRetries(logging.Filter):
    """Drops kfp's log of each failed health check: it carries a traceback per attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to get healthz info")


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """kfp.Client's constructor warns that it needs KFP >= 2.0.0-beta.2 (every time) and logs
    each failed health check to the root logger; the errors that matter are raised."""
    quiet = _NoHealthzRetries()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="This client only works", category=FutureWarning
            )
            yield
    finally:
        root.removeFilter(quiet)

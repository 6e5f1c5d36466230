"""`sigdl pipeline submit` and `compile` without a cluster: configs a cluster cannot run are
refused, an unreachable host is one line naming it (fast), and the compiled YAML loads back.
One test submits for real, to the Kubeflow Pipelines API named by SIGDL_TEST_KFP_HOST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from kfp import components

from pipelines.cicd import PIPELINE_NAME
from pipelines.cluster import connect, submit
from pipelines.results import Candidate, RunVerdict
from sigdl.core import store
from sigdl.core.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: nothing listens there


def _config(tmp_path: Path, **options: object) -> str:
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(options))
    return str(path)


def _sigdl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sigdl.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ({}, "runs_uri=None"),
        ({"runs_uri": "file:///tmp/runs"}, "runs_uri='file:///tmp/runs'"),
        ({"runs_uri": "/tmp/runs"}, "runs_uri='/tmp/runs'"),
        (
            {"runs_uri": "s3://sigdl/runs", "from_checkpoint": "/data/lenet"},
            "from_checkpoint='/data/lenet'",
        ),
    ],
)
def test_a_config_pods_cannot_read_is_refused_before_connecting(tmp_path, options, shown):
    host = f"http://127.0.0.1:{_closed_port()}"  # never reached: the config is checked first
    with pytest.raises(InputError) as caught:
        submit(host, _config(tmp_path, **options), iterate=False, experiment="sigdl")
    message = str(caught.value)
    assert shown in message and "expected an s3://" in message and "\n" not in message


def test_the_default_config_is_refused_for_a_cluster():
    with pytest.raises(InputError, match=r"default config .*runs_uri=None: expected an s3://"):
        submit("http://127.0.0.1:1", None, iterate=True, experiment="sigdl")


def test_a_bad_bucket_name_is_refused(tmp_path):
    with pytest.raises(InputError, match="invalid bucket name"):
        submit(
            "http://127.0.0.1:1",
            _config(tmp_path, runs_uri="s3://No_Bucket/runs"),
            iterate=False,
            experiment="sigdl",
        )


@pytest.mark.parametrize(
    "host", ["localhost:8080", "ftp://localhost:8080", "http://", "http://h:x"]
)
def test_a_host_that_is_no_url_is_refused(host):
    with pytest.raises(InputError, match="expected a URL like http://localhost:8080"):
        connect(host)


def test_a_closed_port_is_one_line_naming_the_host_quickly(tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        submit(
            host, _config(tmp_path, runs_uri="s3://sigdl/runs/t"), iterate=False, experiment="sigdl"
        )
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert f"cannot reach Kubeflow Pipelines at {host!r}" in message
    assert "refused" in message.lower() and "\n" not in message


def test_an_unknown_host_name_is_one_line_naming_it():
    # .invalid never resolves (RFC 2606); the resolver answers without the network
    with pytest.raises(
        InputError, match=r"cannot reach Kubeflow Pipelines at 'http://kfp\.invalid"
    ):
        connect("http://kfp.invalid:8080")


def test_the_cli_exits_2_with_one_error_line_for_a_closed_port(tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"
    config = _config(tmp_path, runs_uri="s3://sigdl/runs/t")
    done = _sigdl("pipeline", "submit", "--host", host, "--config", config)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert host in lines[0]
    assert done.stdout == ""


def test_the_cli_exits_2_for_a_config_without_runs_uri(tmp_path):
    done = _sigdl(
        "pipeline",
        "submit",
        "--host",
        "http://127.0.0.1:1",
        "--config",
        _config(tmp_path, epochs=1),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "runs_uri" in lines[0]


def test_the_cli_compiles_a_pipeline_that_loads_back(tmp_path):
    out = tmp_path / "cicd.yaml"
    done = _sigdl("pipeline", "compile", "--out", str(out))
    assert done.returncode == 0, done.stderr
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == PIPELINE_NAME
    assert {"run_uri", "pipeline_run_id", "candidates", "services"} <= set(
        loaded.component_spec.inputs
    )


class FakeKfpApi(BaseHTTPRequestHandler):
    """The few Kubeflow Pipelines v2beta1 REST calls kfp.Client makes to submit and watch a
    run (a stand-in for kfp's server, on loopback). A created run ends at once in the next of
    `states`, and `on_run` plays its exit handler (writes verdict.json)."""

    states: ClassVar[list[str]] = []  # each run's end state, in order
    on_run = staticmethod(lambda parameters: None)
    runs: ClassVar[list[dict]] = []  # the request bodies of the created runs

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            self._reply({"experiments": [{"experiment_id": "e-1", "display_name": "sigdl"}]})
        elif path.startswith("/apis/v2beta1/runs/"):
            index = int(path.rsplit("-", 1)[1]) - 1
            self._reply({"run_id": f"r-{index + 1}", "state": self.states[index]})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/apis/v2beta1/runs":
            self.send_error(404)
            return
        self.runs.append(body)
        self.on_run(body["runtime_config"]["parameters"])
        self._reply({"run_id": f"r-{len(self.runs)}", "display_name": body["display_name"]})

    def log_message(self, *args: object) -> None:  # quiet: pytest shows stderr on failure
        pass


@pytest.fixture
def fake_kfp() -> Iterator[tuple[str, type[FakeKfpApi]]]:
    api = type("Api", (FakeKfpApi,), {"runs": [], "states": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", api
    server.shutdown()
    server.server_close()


@pytest.fixture
def runs_uri(s3_server, monkeypatch) -> str:
    """A fresh prefix on the test S3 server, which this process reads verdicts from."""
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("SIGDL_S3_SECURE", "false")
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    store.S3Config(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key
    ).make_client().make_bucket(bucket)
    return f"s3://{bucket}/runs/loop-1"


def test_one_submitted_run_returns_its_ids_and_keeps_stdout_clean(tmp_path, fake_kfp, capsys):
    host, api = fake_kfp
    lines: list[str] = []
    config = _config(tmp_path, runs_uri="s3://sigdl/runs/a", targets=["arm-cortex-a53"])
    result = submit(host, config, iterate=False, experiment="sigdl", on_line=lines.append)
    assert result == {
        "run_id": "r-1",
        "pipeline_run_id": result["pipeline_run_id"],
        # one folder per loop: <runs_uri>/<run id>/iteration-N
        "run_uri": f"s3://sigdl/runs/a/{result['pipeline_run_id'].removesuffix('-i1')}/iteration-1",
        "host": host,
    }
    assert capsys.readouterr().out == ""  # kfp's "Run details: <link>" went to on_line
    assert any(f"{host}/#/runs/details/r-1" in line for line in lines)
    (run,) = api.runs
    assert run["display_name"] == result["pipeline_run_id"]
    parameters = run["runtime_config"]["parameters"]
    assert parameters["services"] == "" and parameters["iteration"] == 1
    assert {c["target"] for c in parameters["candidates"]} == {"arm-cortex-a53"}


def _verdict(parameters: dict, *, passed: bool, status: str) -> RunVerdict:
    target = parameters["targets"][0]
    proposal = Candidate(id="i2-c0", iteration=2, target=target, recipe="deep-compression")
    return RunVerdict(
        pipeline_run_id=parameters["pipeline_run_id"],
        iteration=parameters["iteration"],
        passed=passed,
        targets={
            target: {
                "passed": passed,
                "best": "i1-c0" if passed else "",
                "why": "" if passed else "accuracy_drop 3 > 1",
            }
        },
        proposals=[] if passed else [proposal.to_json()],
        status=status,
    )


def test_iterating_starts_the_next_run_from_the_verdict_until_the_gate_passes(
    tmp_path, fake_kfp, runs_uri
):
    host, api = fake_kfp
    api.states = ["SUCCEEDED", "SUCCEEDED"]

    def exit_handler(parameters: dict) -> None:
        passed = parameters["iteration"] == 2
        verdict = _verdict(parameters, passed=passed, status="succeeded")
        store.put_bytes(f"{parameters['run_uri']}/verdict.json", verdict.dumps().encode())

    api.on_run = staticmethod(exit_handler)
    config = _config(
        tmp_path, runs_uri=runs_uri, targets=["arm-cortex-a53"], out=str(tmp_path / "loop")
    )
    result = submit(host, config, iterate=True, experiment="sigdl")
    assert result["passed"] is True and result["kfp_run_ids"] == ["r-1", "r-2"]
    second = api.runs[1]["runtime_config"]["parameters"]
    assert second["iteration"] == 2
    run_id = result["pipeline_run_id"]
    assert second["from_checkpoint"] == f"{runs_uri}/{run_id}/iteration-1/train"
    assert [c["id"] for c in second["candidates"]] == ["i2-c0"]


def test_a_failed_run_is_read_from_its_verdict_not_raised(tmp_path, fake_kfp, runs_uri):
    host, api = fake_kfp
    api.states = ["FAILED"]

    def exit_handler(parameters: dict) -> None:
        verdict = _verdict(parameters, passed=False, status="failed")
        store.put_bytes(f"{parameters['run_uri']}/verdict.json", verdict.dumps().encode())

    api.on_run = staticmethod(exit_handler)
    lines: list[str] = []
    config = _config(
        tmp_path, runs_uri=runs_uri, targets=["arm-cortex-a53"], out=str(tmp_path / "loop")
    )
    result = submit(host, config, iterate=True, experiment="sigdl", on_line=lines.append)
    assert result["passed"] is False and result["kfp_run_ids"] == ["r-1"]
    assert "iteration 1: kfp run r-1 ended FAILED" in lines


def test_an_http_error_from_the_api_is_one_line_with_its_status(tmp_path, fake_kfp):
    host, api = fake_kfp
    api.do_POST = lambda self: self.send_error(403, "Forbidden")  # an HTML page
    config = _config(tmp_path, runs_uri="s3://sigdl/runs/a")
    with pytest.raises(InputError) as caught:
        submit(host, config, iterate=False, experiment="sigdl")
    assert str(caught.value) == f"Kubeflow Pipelines at {host!r} answered HTTP 403 Forbidden"


def test_the_api_s_own_message_is_kept(tmp_path, fake_kfp):
    host, api = fake_kfp
    message = "Invalid input error: run_name must be\nunique"

    def refuse(self: FakeKfpApi) -> None:
        data = json.dumps({"code": 3, "message": message}).encode()
        self.send_response(400, "Bad Request")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    api.do_POST = refuse
    config = _config(tmp_path, runs_uri="s3://sigdl/runs/a")
    with pytest.raises(InputError) as caught:
        submit(host, config, iterate=False, experiment="sigdl")
    assert str(caught.value).endswith(
        "answered HTTP 400 Bad Request: Invalid input error: run_name must be unique"
    )


KFP_HOST = os.environ.get("SIGDL_TEST_KFP_HOST", "")


@pytest.mark.cluster
@pytest.mark.skipif(
    not KFP_HOST,
    reason="needs a Kubeflow Pipelines API with the sigdl chart installed: "
    "SIGDL_TEST_KFP_HOST=http://localhost:8080 (e.g. kubectl -n kubeflow port-forward "
    "svc/ml-pipeline-ui 8080:80) [SIGDL_TEST_RUNS_URI=s3://sigdl/test-runs] pytest -m cluster",
)
def test_a_run_is_submitted_to_a_real_cluster(tmp_path):
    runs = os.environ.get("SIGDL_TEST_RUNS_URI", "s3://sigdl/test-runs").rstrip("/")
    config = _config(tmp_path, runs_uri=f"{runs}/{uuid.uuid4().hex[:8]}", epochs=1)
    result = submit(KFP_HOST, config, iterate=False, experiment="sigdl-tests")
    assert set(result) == {"run_id", "pipeline_run_id", "run_uri", "host"}
    assert result["run_uri"].endswith("/iteration-1")
    run = connect(KFP_HOST).get_run(result["run_id"])
    assert run.display_name == result["pipeline_run_id"]

"""The host calibration: the fit recovers known parameters from synthetic rows, the writer's
profile loads, a user's $SIGDL_HOME/targets/host.yaml takes precedence over the shipped one,
and `sigdl targets calibrate host` runs end to end."""

import json

import numpy as np
import pytest
import yaml

import targets
from services.retest import fit, microbench
from services.retest.calibrate import (
    SHIPPED_HOST,
    machine_provenance,
    template_profile,
    with_calibration,
    write_profile,
)
from sigdl.cli import main

RNG = np.random.default_rng(0)


def _line_rows(klass, a_ms, b_ms, works, c_ms=0.0, acts=None, threads=1):
    acts = acts if acts is not None else [0.0] * len(works)
    return [
        {"class": klass, "threads": threads, "work": float(w), "acts": float(x),
         "node_ms": a_ms + b_ms * w + c_ms * x}
        for w, x in zip(works, acts, strict=True)
    ]  # fmt: skip


def test_fit_line_recovers_intercept_and_slope():
    rows = _line_rows("pool", 0.004, 2e-9, np.geomspace(1e4, 1e9, 12))
    a, b = fit.fit_line(rows, floor_ms=0.001)
    assert a == pytest.approx(0.004, rel=1e-6) and b == pytest.approx(2e-9, rel=1e-6)


def test_fit_line_pins_the_intercept_at_the_floor():
    rows = _line_rows("pool", 0.0, 2e-9, np.geomspace(1e7, 1e9, 12))  # true intercept 0
    a, b = fit.fit_line(rows, floor_ms=0.003)
    assert a == 0.003 and b == pytest.approx(2e-9, rel=0.2)


def test_fit_conv_recovers_operations_and_activation_costs():
    works = np.geomspace(1e5, 3e9, 15)
    acts = RNG.uniform(1e3, 1e7, 15)
    rows = _line_rows("conv", 0.008, 3e-9, works, 5e-7, acts)
    a, b, c = fit.fit_conv(rows, floor_ms=0.001)
    assert (a, b, c) == pytest.approx((0.008, 3e-9, 5e-7), rel=1e-6)


def test_fit_bandwidth_recovers_bytes_per_second():
    rows = _line_rows("gemm", 0.002, 1e3 / 12e9, np.geomspace(6e7, 3e8, 4))
    assert fit.fit_bandwidth(rows, 0.002) == pytest.approx(12e9, rel=1e-9)


def _synthetic_host_rows(profile: dict, threads: int) -> list[dict]:
    """Rows of every class from known parameters (see test below)."""
    rows = []
    works = np.geomspace(1e5, 3e9, 10)
    convs = (("conv", 1e-8), ("pointwise", 1.2e-8), ("conv_stem", 2e-8), ("depthwise", 5e-8))
    for klass, b in convs:
        rows += _line_rows(klass, 0.01, b, works, 2e-7, RNG.uniform(1e3, 1e7, 10), threads)
    for klass, b in (("pool", 2e-7), ("elementwise", 3e-7), ("data", 4e-7), ("reorder", 5e-7)):
        rows += _line_rows(klass, 0.002, b, np.geomspace(1e3, 1e7, 6), threads=threads)
    onchip, cache = (profile["memory"][k] * 1024 for k in ("onchip_kb", "cache_kb"))
    for lo, hi, gbs in ((2.6e5, onchip, 50), (onchip * 1.1, 16e6, 30), (cache * 1.2, 3e8, 10)):
        rows += _line_rows("gemm", 0.003, 1e3 / (gbs * 1e9), np.geomspace(lo, hi, 4),
                           threads=threads)  # fmt: skip
    for r in rows:
        r["node_cold_ms"] = r["node_ms"]
    return rows


def test_fit_recovers_efficiency_overheads_and_bandwidths_per_thread_count():
    _, profile = template_profile()
    peak = profile["compute"]["peak_gops"]["fp32"] / profile["compute"]["cores"] * 1e9
    refs = {"short": (0.02, 1.9), "a": (0.3, 1.3), "b": (5.0, 1.2), "long": (200.0, 1.1)}
    session, rows = {}, []
    for t in (1, 2):
        rows += _synthetic_host_rows(profile, t)
        session[t] = {"fixed_ms": 0.007, "dispatch_ms": 0.001, "references": refs,
                      **microbench.p90_model(refs)}  # fmt: skip
    block = fit.fit(rows, session, profile)
    assert set(block) == {"1", "2"}
    for t in (1, 2):
        b = block[str(t)]
        assert b["efficiency"]["conv"] == pytest.approx(1e3 / 1e-8 / (peak * t), rel=1e-3)
        assert b["efficiency"]["depthwise"] == pytest.approx(1e3 / 5e-8 / (peak * t), rel=1e-3)
        assert b["efficiency"]["pool"] == pytest.approx(min(1e3 / 2e-7 / (peak * t), 1), rel=1e-3)
        assert b["overhead_us"]["conv"] == pytest.approx(10.0, abs=0.01)
        assert b["overhead_us"]["pool"] == pytest.approx(2.0, abs=0.01)
        assert b["activation_ns"]["conv"] == pytest.approx(0.2, rel=1e-3)
        assert b["onchip_bandwidth_gbs"] == pytest.approx(50, rel=1e-2)
        assert b["cache_bandwidth_gbs"] == pytest.approx(30, rel=1e-2)
        assert b["bandwidth_gbs"] == pytest.approx(10, rel=1e-2)
        assert b["overhead_us"]["gemm"] == pytest.approx(3.0, abs=0.01)
        hot_classes = {k: v for k, v in b["efficiency"].items() if k != "gemm"}
        assert b["cold"]["efficiency"] == hot_classes  # the same rows, cold
        assert b["fixed_overhead_us"] == 7.0 and b["free_node_us"] == 1.0
        assert b["p90_curve"][0] == [0.02, 1.9] and b["p90_curve"][-1] == [200.0, 1.1]


def test_p90_model_takes_the_dram_factor_from_the_dram_references():
    refs = {"s": (0.02, 2.0), "m1": (1.0, 1.3), "m2": (2.0, 1.5), "l": (100.0, 1.1),
            "ref gemv 8192x4096": (4.0, 1.4), "ref gemv 16384x4096": (16.0, 1.6)}  # fmt: skip
    model = microbench.p90_model(refs)
    assert model["p90_curve"] == [[0.02, 2.0], [1.0, 1.4], [2.0, 1.4], [100.0, 1.1]]
    assert model["p90_dram_factor"] == 1.5 and model["p90_dram_ms"] == 8.0


def _calibrated_text() -> tuple[str, dict]:
    text, profile = template_profile()
    block = profile["latency_model"]["calibrated"]
    block["1"]["bandwidth_gbs"] = 12.5  # a new figure, to see it written
    measured_on = {"cpu": "Test CPU @ 1 GHz", "cores": 3, "date": "2030-01-02"}
    return with_calibration(text, block, measured_on, "test"), block


def test_the_written_profile_loads_with_its_block_and_provenance(tmp_path):
    text, block = _calibrated_text()
    path = tmp_path / "host.yaml"
    write_profile(path, text)
    loaded = targets.load_file(path)
    assert loaded["latency_model"]["calibrated"] == block
    assert loaded["measured_on"] == {"cpu": "Test CPU @ 1 GHz", "cores": 3, "date": "2030-01-02"}
    assert loaded["latency_model"]["calibration_source"] == "test"
    assert "# Sources:" in path.read_text()  # the shipped comments are kept


def test_machine_provenance_names_the_cpu_cores_and_date():
    info = machine_provenance()
    assert info["cpu"] and info["cores"] >= 1 and len(info["date"]) == 10
    targets.validate({**template_profile()[1], "measured_on": info}, "provenance")


def test_the_shipped_host_profile_says_where_it_was_measured():
    shipped = targets.load_file(SHIPPED_HOST)
    assert set(shipped["measured_on"]) == {"cpu", "cores", "date"}


def test_a_user_host_profile_takes_precedence_over_the_shipped_one(sigdl_env):
    assert targets.profile_path("host") == SHIPPED_HOST
    user = sigdl_env / "targets" / "host.yaml"
    write_profile(user, _calibrated_text()[0])
    assert targets.profile_path("host:") == user
    profile = targets.load_profile("host")
    assert profile["measured_on"]["cpu"] == "Test CPU @ 1 GHz"
    assert profile["latency_model"]["calibrated"]["1"]["bandwidth_gbs"] == 12.5
    assert targets.load_profile("jetson-tx2")["name"] == "jetson-tx2"  # others stay shipped
    user.unlink()
    assert (
        targets.load_profile("host")["measured_on"]
        == targets.load_file(SHIPPED_HOST)["measured_on"]
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ("name: host\nkind: [unclosed\n", "host.yaml"),
        ("name: host\n", "field"),
        (None, "field 'name'"),
    ],
)
def test_a_malformed_user_profile_is_a_one_line_error_naming_the_file(sigdl_env, text, says):
    user = sigdl_env / "targets" / "host.yaml"
    user.parent.mkdir(parents=True)
    if text is None:  # a valid profile of another name
        text = SHIPPED_HOST.read_text().replace("name: host", "name: other", 1)
    user.write_text(text)
    with pytest.raises(targets.ProfileError) as info:
        targets.load_profile("host")
    message = str(info.value)
    assert str(user) in message and says in message and "\n" not in message


def test_cli_show_says_which_file_the_profile_came_from(sigdl_env, capsys):
    assert main(["targets", "show", "host"]) == 0
    assert capsys.readouterr().out.startswith(f"# from {SHIPPED_HOST}\n")
    write_profile(sigdl_env / "targets" / "host.yaml", _calibrated_text()[0])
    assert main(["targets", "show", "host"]) == 0
    assert capsys.readouterr().out.startswith(f"# from {sigdl_env / 'targets' / 'host.yaml'}\n")


@pytest.mark.parametrize(
    "args, says",
    [
        (["jetson-tx2"], "only 'host'"),
        (["host", "--threads", "1,x"], "--threads"),
        (["host", "--threads", "0"], "--threads"),
        (["host", "--rounds", "0"], "--rounds"),
    ],
)
def test_cli_calibrate_refuses_bad_input_in_one_line(args, says, capsys):
    assert main(["targets", "calibrate", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_calibrate_host_writes_a_profile_the_loader_prefers(sigdl_env, capsys):
    code = main(["targets", "calibrate", "host", "--rounds", "2", "--threads", "1", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    user = sigdl_env / "targets" / "host.yaml"
    assert summary["profile"] == str(user) and summary["threads"] == [1]
    profile = targets.load_profile("host")
    assert profile["measured_on"] == summary["measured_on"]
    assert list(profile["latency_model"]["calibrated"]) == ["1"]
    assert yaml.safe_load(user.read_text())["latency_model"]["calibrated"]["1"]["bandwidth_gbs"] > 0

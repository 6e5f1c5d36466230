"""x86 targets emulated on pinned host cores (services/retest/emulate.py, measure.pinned):
the affinity set to min(target cores, host CPUs) and restored, ONNX Runtime's threads inside
the pinned set, the host-to-target factor from the two profiles' data-sheet figures, the
report's method per figure, and bad settings and profiles as one-line errors. Real sessions
and real retests; no assertion on how long anything takes."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import onnx
import pytest
import torch

import targets
from services.retest import emulate
from services.retest.graph import analyze
from services.retest.measure import emulation_cpus, open_session, parse_cpu_list, pinned
from services.retest.predict import latency_params, predict_latency
from services.retest.stage import load_target, run_retest
from sigdl.cli import main
from sigdl.core import checkpoint, onnx_io
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError

DATASHEET = "data-sheet (no published Atom measurements found)"
ATOMS = {"atom-x5-e3930": 2, "atom-x5-e3940": 4}  # target: cores


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    meta = ModelMeta(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.13],
                     std=[0.31], dataset="mnist")  # fmt: skip
    path = tmp_path_factory.mktemp("models") / "lenet-5.onnx"
    return onnx_io.export_onnx(checkpoint.build(meta), path, meta.input_shape,
                               {"sigdl.model_json": meta.to_json()})  # fmt: skip


def _thread_cpus() -> dict[str, set[int]]:
    """Every thread of this process and the CPUs it may run on."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[task.name] = set(parse_cpu_list(line.split(":", 1)[1].strip()))
    return out


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_pinning_takes_min_of_target_and_host_cores_and_restores_the_affinity(lenet5, cores):
    before = os.sched_getaffinity(0)
    threads_before = set(_thread_cpus())
    cpus = emulation_cpus(cores)
    assert len(cpus) == min(cores, len(before)) and set(cpus) <= before
    with pinned(cpus):
        assert os.sched_getaffinity(0) == set(cpus)
        sess, feed = open_session(lenet5.read_bytes(), len(cpus))  # ORT starts its pool here
        sess.run(None, feed)
        new = {t: c for t, c in _thread_cpus().items() if t not in threads_before}
        assert all(c <= set(cpus) for c in new.values()), new  # ONNX Runtime's threads too
        del sess
    assert os.sched_getaffinity(0) == before


def test_the_affinity_is_restored_when_the_block_fails():
    before = os.sched_getaffinity(0)
    with pytest.raises(RuntimeError), pinned(emulation_cpus(1)):
        raise RuntimeError("measurement failed")
    assert os.sched_getaffinity(0) == before


def test_the_emulation_cpus_setting(monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("SIGDL_EMULATION_CPUS", str(allowed[-1]))
    assert emulation_cpus(4) == [allowed[-1]]  # one CPU given: one pinned, whatever the target
    assert parse_cpu_list("0-2, 5") == [0, 1, 2, 5]


@pytest.mark.parametrize(
    ("value", "match"),
    [("two", "expected CPU numbers"), ("3-1", "runs backwards"), ("99999", "may run on")],
)
def test_a_bad_emulation_cpus_setting_is_a_one_line_error(monkeypatch, value, match):
    monkeypatch.setenv("SIGDL_EMULATION_CPUS", value)
    with pytest.raises(InputError, match=match) as info:
        emulation_cpus(2)
    assert "\n" not in str(info.value) and "SIGDL_EMULATION_CPUS" in str(info.value)


def test_the_per_core_rate_is_clock_times_simd_times_flop_per_lane_times_efficiency():
    """Goldmont: 1.8 GHz x 4 fp32 lanes x (1 mul + 1 add) = 14.4 GFLOP/s per core, on both
    Atoms; x their conv efficiency (0.55, the profile's estimate)."""
    for name, cores in ATOMS.items():
        profile = load_target(name)
        assert profile["compute"]["cores"] == cores
        assert profile["compute"]["peak_gops"]["fp32"] / cores == pytest.approx(1.8 * 4 * 2)
        rate = emulate.per_core_rate_gops(profile, "fp32", 2)
        assert rate == pytest.approx(14.4 * profile["latency_model"]["efficiency"]["conv"])


def test_the_host_factor_from_the_two_profiles_figures():
    host = load_target("host")
    for name in ATOMS:
        target = load_target(name)
        for threads in (1, 2):
            h, t = latency_params(host, threads), latency_params(target, threads)
            compute = (host["compute"]["peak_gops"]["fp32"] / host["compute"]["cores"]
                       * h["efficiency"]["conv"]) / (
                target["compute"]["peak_gops"]["fp32"] / target["compute"]["cores"]
                * t["efficiency"]["conv"])  # fmt: skip
            memory = (h["bandwidth_gbs"] * h["bandwidth_efficiency"]) / (
                t["bandwidth_gbs"] * t["bandwidth_efficiency"])  # fmt: skip
            clock = host["compute"]["clock_ghz"] / 1.8  # [ARK] Goldmont's 1.8 GHz burst
            for share, overhead in ((0.0, 0.0), (0.3, 0.0), (1.0, 0.0), (0.2, 0.5), (0.0, 1.0)):
                f = emulate.host_to_target(target, host, "fp32", threads, share, overhead)
                expected = (1 - share - overhead) * compute + share * memory + overhead * clock
                assert f["factor"] == pytest.approx(expected)
                assert f["factor_basis"] == DATASHEET
                assert f["compute_factor"] == pytest.approx(compute)
                assert f["memory_factor"] == pytest.approx(memory)
            assert compute > 1  # an AVX-512 core outruns a 128-bit SSE one
    # the same Goldmont core and memory: the same factor at the same pinned cores
    e3930, e3940 = (emulate.host_to_target(load_target(n), host, "fp32", 2, 0.2) for n in ATOMS)
    assert e3930["factor"] == pytest.approx(e3940["factor"])


def test_a_fitted_factor_replaces_the_data_sheet_one():
    target, host = load_target("atom-x5-e3940"), load_target("host")
    target["emulation"]["host_factor"]["fitted"] = {"factor": 7.5, "source": "published runs"}
    targets.validate(target, "fitted")  # the field `sigdl targets fit` would fill
    f = emulate.host_to_target(target, host, "fp32", 2, 0.4)
    assert f == {"factor": 7.5, "factor_basis": "fitted (published runs)"}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: p["emulation"].pop("host_factor"), "host_factor"),
        (lambda p: p["emulation"]["host_factor"].update(fitted={"factor": 0, "source": "x"}),
         "host_factor"),
        (lambda p: p["emulation"]["host_factor"].pop("factor_basis"), "factor_basis"),
    ],
)  # fmt: skip
def test_a_bad_host_factor_in_a_profile_is_a_one_line_error(edit, match):
    profile = copy.deepcopy(targets.load_file(targets.HERE / "atom-x5-e3930.yaml"))
    edit(profile)
    with pytest.raises(targets.ProfileError, match=match) as info:
        targets.validate(profile, "atom-x5-e3930.yaml")
    assert "\n" not in str(info.value)


def test_bad_factor_inputs_are_one_line_errors():
    target, host = load_target("atom-x5-e3930"), load_target("host")
    with pytest.raises(InputError, match="dram_share"):
        emulate.host_to_target(target, host, "fp32", 2, 1.5)
    with pytest.raises(InputError, match="sum to at most 1"):
        emulate.host_to_target(target, host, "fp32", 2, 0.6, 0.6)
    with pytest.raises(InputError, match="no peak figure"):
        emulate.host_to_target(target, host, "fp16", 2, 0.0)


@pytest.mark.parametrize("name", sorted(ATOMS))
def test_an_atom_retest_measures_on_pinned_cores_and_reports_both_figures(lenet5, name):
    before = os.sched_getaffinity(0)
    report = run_retest(str(lenet5), name)
    assert os.sched_getaffinity(0) == before
    scaled, modelled = report["measured_and_scaled"], report["modelled"]
    cores = ATOMS[name]
    assert scaled["target_threads"] == cores == report["threads"]
    assert scaled["pinned_threads"] == len(scaled["pinned_cpus"]) == min(cores, len(before))
    assert scaled["factor_basis"] == DATASHEET
    for figure in ("latency_ms", "p90_latency_ms", "fps", "latency_ms_range", "fps_range"):
        assert report["methods"][figure] == "measured-and-scaled"
        assert report[figure] == scaled[figure]
    assert report["methods"]["power_w"] == report["methods"]["energy_mj"] == "modelled"
    # the arithmetic (not the timing): measured median x factor x modelled core scaling
    host_ms = scaled["host_measured"]["p50_ms"]
    assert report["latency_ms"] == pytest.approx(
        host_ms * scaled["factor"] * scaled["core_scaling"]
    )
    graph = analyze(onnx.load(lenet5))
    profile = load_target(name)
    assert modelled["latency_ms"] == pytest.approx(
        predict_latency(graph, profile, "fp32", cores)["latency_ms"]
    )
    pinned_n = scaled["pinned_threads"]
    expected = (
        predict_latency(graph, profile, "fp32", cores)["latency_ms"]
        / predict_latency(graph, profile, "fp32", pinned_n)["latency_ms"]
    )
    assert scaled["core_scaling"] == pytest.approx(expected)
    assert (scaled["core_scaling"] == 1.0) == (pinned_n == cores)
    # the shares the factor blends come from the host profile's prediction at the pinned cores
    host = load_target("host")
    at_host = predict_latency(graph, host, "fp32", pinned_n)
    assert scaled["dram_share"] == pytest.approx(at_host["dram_bound_ms"] / at_host["latency_ms"])
    overhead = emulate.overhead_ms(graph, host, "fp32", pinned_n) / at_host["latency_ms"]
    assert scaled["overhead_share"] == pytest.approx(overhead) and 0 < overhead < 1
    assert scaled["factor"] == pytest.approx(
        emulate.host_to_target(profile, host, "fp32", pinned_n, scaled["dram_share"], overhead)[
            "factor"
        ]
    )


def test_fewer_threads_pin_fewer_cores_and_other_targets_stay_modelled(lenet5):
    report = run_retest(str(lenet5), "atom-x5-e3940", threads=1)
    scaled = report["measured_and_scaled"]
    assert scaled["pinned_threads"] == scaled["target_threads"] == 1
    assert scaled["core_scaling"] == 1.0
    modelled = run_retest(str(lenet5), "arm-cortex-a53")
    assert "measured_and_scaled" not in modelled
    assert set(modelled["methods"].values()) == {"modelled"}
    assert modelled["latency_ms"] == modelled["modelled"]["latency_ms"]


def test_the_cli_refuses_a_bad_emulation_cpus_setting_with_exit_2(lenet5, monkeypatch, capsys):
    monkeypatch.setenv("SIGDL_EMULATION_CPUS", "0-x")
    assert main(["retest", str(lenet5), "--target", "atom-x5-e3930"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # refused before any work: no progress line either
    assert "SIGDL_EMULATION_CPUS" in lines[0] and "expected CPU numbers" in lines[0]

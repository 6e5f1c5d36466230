"""`sigdl targets fit`: the fit reads only the calibration (fit) set, is deterministic, recovers
a latency model it could express, and writes a profile the loader accepts; the interval it
leaves is what the retest reports and what the gate's pessimistic metrics read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import targets
from services.retest import targetfit
from services.retest.gate import gate, parse_requirement
from services.retest.predict import UNFITTED_INTERVAL, latency_interval, predict_latency
from sigdl.core.errors import InputError
from targets import measurements as ms

# the smallest fit set (Raspberry Pi 3: ShuffleNet v1, GoogLeNet, ResNet-18, MobileNet-SSD)
TARGET = "arm-cortex-a53"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """One graph cache for the module: the four graphs are exported once (~10 s)."""
    return tmp_path_factory.mktemp("graphs")


def _scaled(role: str, factor: float) -> tuple[ms.Measurement, ...]:
    return tuple(dataclasses.replace(m, latency_ms=m.latency_ms * factor) if m.role == role
                 else m for m in ms.measurements(TARGET))  # fmt: skip


def _fit_file(tmp_path, graphs, name: str) -> bytes:
    out = tmp_path / f"{name}.yaml"
    targetfit.fit_target(TARGET, out=out, cache_dir=graphs)
    return out.read_bytes()


def test_the_fit_never_reads_a_validation_figure(tmp_path, graphs, monkeypatch):
    honest = _fit_file(tmp_path, graphs, "honest")
    # the zoo's published figures made absurd: the written profile is byte for byte the same
    absurd, doubled = _scaled("validation", 1000.0), _scaled("fit", 2.0)
    monkeypatch.setattr(ms, "_load_cached", lambda target: absurd)
    assert ms.validation_set(TARGET)[0].latency_ms > 1000
    assert _fit_file(tmp_path, graphs, "absurd") == honest
    # ... while the fit set's figures do move it (the comparison above can fail)
    monkeypatch.setattr(ms, "_load_cached", lambda target: doubled)
    assert _fit_file(tmp_path, graphs, "doubled") != honest


def test_a_zoo_figure_handed_to_the_fit_is_refused(graphs):
    _, profile = targetfit.shipped_profile(TARGET)
    with pytest.raises(InputError, match="zoo model"):
        targetfit.fit(TARGET, profile, ms.validation_set(TARGET), graphs)


def test_the_fit_is_deterministic_and_writes_a_valid_profile(tmp_path, graphs):
    first, second = _fit_file(tmp_path, graphs, "a"), _fit_file(tmp_path, graphs, "b")
    assert first == second
    data = targets.load_file(tmp_path / "a.yaml")
    fitted = data["latency_model"]["fitted"]
    assert fitted["summary"]["entries"] == len(fitted["residuals"]) >= 4
    assert {r["model"] for r in fitted["residuals"]} <= {m.model for m in ms.fit_set(TARGET)}
    # comments of the shipped profile are kept, and a refit replaces the block, not adds one
    text = (tmp_path / "a.yaml").read_text()
    assert "[RPI] Raspberry Pi 3 Model B product brief" in text
    again = targetfit.with_fitted(text, fitted)
    assert again.count("# BEGIN fitted") == 1


def test_the_fit_recovers_a_model_it_can_express(graphs):
    """Figures made by a known fitted block (not the data sheet) are fitted back to within 3%."""
    _, profile = targetfit.shipped_profile(TARGET)
    rows, _ = targetfit.usable(ms.fit_set(TARGET))
    truth = {"efficiency": {"conv": 0.5, "pointwise": 0.45, "conv_stem": 0.25,
                            "depthwise": 0.07},
             "overhead_us": dict.fromkeys(targetfit.COMPUTE_CLASSES, 30.0),
             "half_rate_outputs": 3e4}  # fmt: skip
    true_profile = targetfit.with_block(profile, truth)
    made = []
    for m in rows:
        graph = targetfit.graph_of(m.model, m.input_shape, graphs)
        made.append(dataclasses.replace(m, latency_ms=targetfit.predict_ms(graph, true_profile, m)))
    result = targetfit.fit(TARGET, profile, made, graphs)
    ratios = [r["ratio"] for r in result.block["residuals"]]
    assert max(abs(np.log(ratios))) < np.log(1.03), ratios
    # the data sheet alone is further off on the same figures
    base = targetfit.with_block(profile, {})
    before = [targetfit.predict_ms(targetfit.graph_of(m.model, m.input_shape, graphs), base, m)
              / m.latency_ms for m in made]  # fmt: skip
    assert max(abs(np.log(before))) > max(abs(np.log(ratios)))


def _held_out(*ratios: float) -> list[dict]:
    return [{"held_out_ratio": r} for r in ratios]


def test_interval_takes_the_conformal_ranks_of_the_held_out_residuals():
    # 19 held-out figures: the 2nd and 18th of the sorted log(published / predicted)
    # (floor(20 x 0.1), ceil(20 x 0.9)); published / predicted runs 0.70 ... 1.42
    published_over_predicted = np.exp(np.linspace(np.log(0.7), np.log(1.42), 19))
    low, high = targetfit.interval(_held_out(*(1 / published_over_predicted)))
    assert low == pytest.approx(published_over_predicted[1], 1e-3)
    assert high == pytest.approx(published_over_predicted[17], 1e-3)
    # too few figures for either rank: the unfitted interval, or the furthest residual
    assert targetfit.interval(_held_out(0.9, 1.1, 1.0, 0.95)) == list(UNFITTED_INTERVAL)
    assert targetfit.interval(_held_out(0.3, 1.0, 1.0, 1.0))[1] == pytest.approx(1 / 0.3, 1e-3)
    # all residuals on one side: the interval still holds the prediction itself
    assert targetfit.interval(_held_out(*[1 / 1.2] * 19))[0] == 1.0


def test_held_out_ratios_come_from_fits_without_the_figure(graphs):
    """A figure made 3x slower than its model: the fit of all figures absorbs part of it (its
    in-sample ratio moves toward 1), the fit without it cannot (its held-out ratio does not)."""
    _, profile = targetfit.shipped_profile(TARGET)
    rows, _ = targetfit.usable(ms.fit_set(TARGET))
    made = [dataclasses.replace(m, latency_ms=m.latency_ms * (3.0 if i == 0 else 1.0))
            for i, m in enumerate(rows)]  # fmt: skip
    table = targetfit.fit(TARGET, profile, made, graphs).block["residuals"]
    outlier = table[0]
    assert abs(np.log(outlier["held_out_ratio"])) > abs(np.log(outlier["ratio"])) + 0.05
    assert all(np.isfinite(r["held_out_ratio"]) for r in table)


def test_prediction_carries_the_fitted_interval_or_the_unfitted_one(graphs):
    _, profile = targetfit.shipped_profile(TARGET)
    graph = targetfit.graph_of("resnet-18", (1, 3, 224, 224), graphs)
    fitted = targetfit.with_block(profile, {"interval": [0.8, 1.3], "summary": {"entries": 4}})
    pred = predict_latency(graph, fitted, "fp32", 4)
    low, high = pred["latency_ms_range"]
    assert low == pytest.approx(0.8 * pred["latency_ms"]) and high == pytest.approx(
        1.3 * pred["latency_ms"])  # fmt: skip
    assert pred["fps_range"][0] == pytest.approx(1e3 / high)
    assert "4 published figures" in pred["latency_range_basis"]
    assert "held-out" in pred["latency_range_basis"]
    bare = targetfit.with_block(profile, {})
    assert latency_interval(bare, 10.0)[0] == [10.0 * f for f in UNFITTED_INTERVAL]


def test_the_gate_can_require_the_pessimistic_end():
    report = {"operators": {"failures": [], "passed": True},
              "memory": {"memory_mb": 1.0, "ram_mb": 1024, "fits_ram": True},
              "latency_ms": 40.0, "latency_ms_range": [33.0, 51.0], "fps": 25.0,
              "fps_range": [1e3 / 51, 1e3 / 33]}  # fmt: skip
    assert gate(report, [parse_requirement("latency_ms<=50")])["passed"]
    assert not gate(report, [parse_requirement("latency_ms_hi<=50")])["passed"]
    assert gate(report, [parse_requirement("latency_ms_hi<=51")])["passed"]
    assert not gate(report, [parse_requirement("fps_lo>=20")])["passed"]  # 19.6 fps
    assert gate(report, [parse_requirement("fps_lo>=19")])["passed"]
    # a report without a range (an older one) fails the requirement instead of passing it
    del report["latency_ms_range"]
    assert not gate(report, [parse_requirement("latency_ms_hi<=100")])["passed"]


def test_an_unknown_target_or_one_without_fit_figures_is_refused(tmp_path, graphs):
    with pytest.raises(InputError, match="unknown target"):
        targetfit.fit_target("no-such-board", out=tmp_path / "x.yaml", cache_dir=graphs)
    with pytest.raises(InputError, match="no published figure"):
        targetfit.fit_target("movidius-ma2450", out=tmp_path / "x.yaml", cache_dir=graphs)

"""The retest latency model's DFT class (the fft-conv step's frequency-domain convolutions):
the operation count of a DFT node, its shapes through the rewrite's Unsqueeze/Slice plumbing,
the host's DFT figures fitted from micro-benchmark rows, the conservative default on a profile
without them, each target's operator-check verdict, and `sigdl retest` on a DFT model pricing
its DFT nodes as such (not as unknown ops). No timing is asserted here."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import targets
from services.compression.fft_onnx import fft_conv_onnx
from services.retest import fit, microbench
from services.retest.graph import UNKNOWN, analyze, fft_ops
from services.retest.opcheck import check_operators
from services.retest.predict import (
    latency_params,
    node_time_s,
    parallel_threads,
    unknown_op_params,
)
from sigdl.cli import main
from sigdl.core import checkpoint, onnx_io
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError

# targets whose runtime runs ONNX's DFT (ONNX Runtime's CPU kernel), and those whose runtime
# has none (TensorRT 8.x, NCSDK, ncnn, TIDL): see the comments in their profiles
RUNS_DFT = {"host", "atom-x5-e3930", "atom-x5-e3940"}
NO_DFT = {"jetson-tx2", "movidius-ma2450", "arm-cortex-a53", "arm-cortex-a72", "ti-c66x"}


@pytest.fixture(scope="module")
def fft_lenet(tmp_path_factory) -> str:
    """LeNet-5 with seeded random weights, its convolutions rewritten to DFT nodes."""
    folder = tmp_path_factory.mktemp("fft-models")
    torch.manual_seed(0)
    meta = ModelMeta(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.13],
                     std=[0.31], dataset="mnist")  # fmt: skip
    direct = onnx_io.export_onnx(checkpoint.build(meta), folder / "model.onnx", meta.input_shape)
    fft_bytes, layers = fft_conv_onnx(direct.read_bytes())
    assert len(layers) == 2  # both convolutions rewritten
    path = folder / "model.fft.onnx"
    path.write_bytes(fft_bytes)
    return str(path)


@pytest.mark.parametrize(
    ("n", "ops"),
    [
        (1, 0),
        (2, 10),  # one butterfly: a complex multiply (6) and two complex adds (2 each)
        (32, 5 * 32 * 5),  # radix-2: (n / 2) log2 n butterflies of 10 operations
        (28, 10 * 64 * 6 + 6 * 64 + 12 * 28),  # Bluestein: two radix-2 FFTs of 64 >= 2n - 1
        (12, 10 * 32 * 5 + 6 * 32 + 12 * 12),  # ... of 32 >= 23
    ],
)
def test_fft_ops_counts_radix2_for_powers_of_two_and_bluestein_otherwise(n, ops):
    assert fft_ops(n) == ops


@pytest.mark.parametrize(
    ("shape", "n", "axis", "onesided", "inverse", "lines", "out"),
    [
        ([1, 20, 12, 12, 1], 12, 3, True, False, 20 * 12, [1, 20, 12, 7, 2]),  # rfft along W
        ([1, 20, 12, 7, 2], 12, 2, False, False, 20 * 7, [1, 20, 12, 7, 2]),  # fft along H
        ([1, 50, 12, 7, 2], 12, 3, True, True, 50 * 12, [1, 50, 12, 12, 1]),  # irfft along W
        ([1, 64, 32, 17, 2], 32, 2, False, True, 64 * 17, [1, 64, 32, 17, 2]),  # ifft along H
        ([1, 3, 10, 10, 1], 16, 2, False, False, 3 * 10, [1, 3, 16, 10, 2]),  # zero-padded
    ],
)
def test_a_dft_node_counts_one_transform_per_line_along_its_axis(
    shape, n, axis, onesided, inverse, lines, out
):
    model = microbench.dft_model(shape, n, axis, onesided, inverse)
    (node,) = analyze(onnx.load_from_string(model)).nodes
    assert node.op_class == "dft" and not node.shape_assumed
    assert node.attrs["axis"] == axis and node.attrs["dft_length"] == n
    assert node.ops == lines * fft_ops(n) and node.macs == 0
    assert node.out_shape == out
    assert (node.in_elems, node.out_elems) == (int(np.prod(shape)), int(np.prod(out)))


def _dft17(axis: int | None, length_input: bool) -> onnx.ModelProto:
    """One opset-17 DFT (axis an attribute) of a (1, 4, 8, 6, 2) complex input."""
    inits = [numpy_helper.from_array(np.array(10, np.int64), "n")] if length_input else []
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node("DFT", ["x", "n" if length_input else ""], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 6, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("axis", "length_input", "want_axis", "want_n", "lines"),
    [(None, False, 1, 4, 8 * 6), (2, False, 2, 8, 4 * 6), (-2, True, 3, 10, 4 * 8)],
)
def test_an_opset17_dft_takes_its_axis_attribute_and_optional_length(
    axis, length_input, want_axis, want_n, lines
):
    (node,) = analyze(_dft17(axis, length_input)).nodes
    assert (node.attrs["axis"], node.attrs["dft_length"]) == (want_axis, want_n)
    assert node.ops == lines * fft_ops(want_n)


def test_a_dft_length_that_is_not_a_constant_is_refused_in_one_line():
    node = helper.make_node("DFT", ["x", "n"], ["y"], axis=2)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="dft_length 'n' is not a constant") as err:
        analyze(model)
    assert "\n" not in str(err.value)


def test_the_fft_rewrite_is_sized_through_its_plumbing_and_every_dft_classified(fft_lenet):
    graph = analyze(onnx.load(fft_lenet))
    assert not [n.name for n in graph.nodes if n.shape_assumed]
    dfts = [n for n in graph.nodes if n.op_type == "DFT"]
    assert len(dfts) == 8 and {n.op_class for n in dfts} == {"dft"}
    assert UNKNOWN not in {n.op_class for n in graph.nodes}
    # conv1's one-sided inverse along W: 20 channels x 28 rows of 28 points -> (1, 20, 28, 28, 1)
    last = next(n for n in dfts if n.attrs.get("inverse") and n.attrs.get("onesided"))
    assert last.out_shape == [1, 20, 28, 28, 1] and last.ops == 20 * 28 * fft_ops(28)
    # the MatMuls against the kernel spectra: (Nh, Nf, B, C) x (Nh, Nf, C, O)
    matmuls = [n for n in graph.nodes if n.op_type == "MatMul"]
    assert [n.macs for n in matmuls] == [28 * 15 * 20] * 4 + [12 * 7 * 50 * 20] * 4


def _dft_rows(threads: int, a_ms: float, b_ms: float, c_ms: float) -> list[dict]:
    """Rows of the DFT micro-benchmarks (their real work and activation counts) whose node
    times follow  a + work x b + acts x c."""
    latency_model = targets.load_profile("host")["latency_model"]
    rows = []
    for klass, label, model in microbench.cases("dft"):
        work = microbench.work_of(model, klass, latency_model, threads)
        ms = a_ms + b_ms * work["work"] + c_ms * work["acts"]
        rows.append({"class": "dft", "case": label, "threads": threads, **work,
                     "node_ms": ms, "node_cold_ms": ms})  # fmt: skip
    return rows


def test_the_dft_cases_are_the_fft_rewrites_shapes():
    labels = [label for _, label, _ in microbench.cases("dft")]
    assert "dft rfft W 1x28x28 n28" in labels and "dft irfft W 50x12x7 n12" in labels
    assert len(labels) == len(microbench.DFT_CASES)
    assert {klass for klass, _, _ in microbench.cases("dft")} == {"dft"}


@pytest.mark.parametrize("threads", [1, 2])
def test_the_dft_efficiency_overhead_and_element_cost_are_fit_from_its_rows(threads):
    peak_per_core = 179.2  # Gop/s: the host's 358.4 over 2 cores
    b_ms = 1e3 / (0.01 * peak_per_core * threads * 1e9)  # 1% of peak
    rows = _dft_rows(threads, 0.004, b_ms, 2e-6)
    eff, overhead, per_act = fit.fit_classes(rows, 0.001, threads, peak_per_core, [])
    assert eff == {"dft": pytest.approx(0.01, rel=1e-3)}
    assert overhead == {"dft": pytest.approx(4.0, abs=0.01)}
    assert per_act == {"dft": pytest.approx(2.0, rel=1e-3)}  # ns per element


def test_the_dft_rows_are_measured_alone_with_the_dispatch_cost_beside_them():
    probes = microbench.class_probes("dft", (1,))
    keys = {p.key for p in probes}
    assert {"fixed t1", "dispatch t1 n1", "dispatch t1 n3"} <= keys
    assert f"{microbench.DISPATCH_CASE} t1 profiled" in keys
    assert {p.every for p in probes} == {1}
    labels = {label for _, label, _ in microbench.cases("dft")}
    measured = {p.key.split(" t1")[0] for p in probes} - {"fixed", "dispatch"}
    assert measured == labels | {microbench.DISPATCH_CASE}


def test_a_class_without_micro_benchmarks_is_refused_naming_those_that_have():
    with pytest.raises(InputError, match=r"class 'fft' has no micro-benchmarks: expected one of"):
        microbench.class_probes("fft")


def test_class_rows_take_kernel_time_above_the_nearly_free_node_plus_dispatch():
    """Timings as run_rounds returns them, built by hand: every DFT kernel 300 us, the nearly
    free Relu's 20 us, the dispatch chains 10 and 14 us (2 us per node)."""
    times, kernels = {}, {}
    for p in microbench.class_probes("dft", (1,)):
        ms = {"dispatch t1 n1": 0.010, "dispatch t1 n3": 0.014}.get(p.key, 0.5)
        times[p.key] = [np.full(5, ms)]
        if p.profiled:
            us = 20.0 if p.key.startswith(microbench.DISPATCH_CASE) else 300.0
            kernels[p.key] = {"node": {"op": "DFT", "us": [us, us]}}
    timings = microbench.Timings(times, kernels)
    latency_model = targets.load_profile("host")["latency_model"]
    rows = microbench.class_rows(timings, "dft", latency_model, (1,))
    assert len(rows) == len(microbench.DFT_CASES) and {r["class"] for r in rows} == {"dft"}
    for r in rows:
        assert r["node_ms"] == pytest.approx(0.300 - 0.020 + 0.002)
        assert r["node_cold_ms"] == pytest.approx(0.282)


def _dft_node(shape=(1, 20, 28, 15, 2), n=28):
    model = microbench.dft_model(list(shape), n, 2, False, False)
    return analyze(onnx.load_from_string(model)).nodes[0]


def test_the_host_prices_a_dft_with_its_own_calibrated_figures():
    profile = targets.load_profile("host")
    params = latency_params(profile, 1)
    assert "dft" in params["efficiency"] and "dft" in params["overhead_us"]
    node = _dft_node()
    seconds, _, _ = node_time_s(node, profile, params, "fp32", "onchip")
    slower = {**params, "efficiency": {**params["efficiency"],
                                       "dft": params["efficiency"]["dft"] / 2}}  # fmt: skip
    twice, _, _ = node_time_s(node, profile, slower, "fp32", "onchip")
    compute = node.ops / (profile["compute"]["peak_gops"]["fp32"] / 2 * 1e9
                          * params["efficiency"]["dft"])  # fmt: skip
    assert twice - seconds == pytest.approx(compute, rel=1e-6)


def test_a_dft_runs_on_one_thread_and_its_2_thread_figure_is_per_core():
    """ONNX Runtime's DFT kernel has no thread pool: the node is priced on one core, and the
    host's calibrated DFT efficiency (per core) is about the same at 1 and 2 threads."""
    profile = targets.load_profile("host")
    one, two = latency_params(profile, 1), latency_params(profile, 2)
    assert parallel_threads(_dft_node(), two) == 1
    assert two["efficiency"]["dft"] == pytest.approx(one["efficiency"]["dft"], rel=0.25)


@pytest.mark.parametrize("target", sorted(NO_DFT | RUNS_DFT - {"host"}))
def test_a_profile_without_a_dft_figure_prices_it_at_its_slowest_classs(target):
    profile = targets.load_profile(target)
    params, precision = latency_params(profile, None), profile["native_precision"]
    assert "dft" not in (params["efficiency"] or {})
    node = _dft_node()
    seconds, _, _ = node_time_s(node, profile, params, precision, "onchip")
    slowest = unknown_op_params(params, "dft")
    assert slowest["efficiency"]["dft"] == min(params["efficiency"].values())
    assert slowest["overhead_us"]["dft"] == max(params["overhead_us"].values())
    explicit, _, _ = node_time_s(node, profile, slowest, precision, "onchip")
    assert seconds == explicit
    faster = {**params, "efficiency": {**params["efficiency"], "dft": 1.0},
              "overhead_us": {**params["overhead_us"], "dft": 0.0}}  # fmt: skip
    assert node_time_s(node, profile, faster, precision, "onchip")[0] < seconds


@pytest.mark.parametrize("target", sorted(RUNS_DFT | NO_DFT))
def test_opcheck_fails_dft_exactly_where_the_targets_runtime_has_none(target, fft_lenet):
    profile = targets.load_profile(target)
    result = check_operators(analyze(onnx.load(fft_lenet)), profile)
    dft_failures = [f for f in result["failures"] if f["op"] == "DFT"]
    assert result["unknown"] == []
    if target in RUNS_DFT:
        assert dft_failures == [] and result["passed"]
    else:
        assert len(dft_failures) == 8 and not result["passed"]
        assert dft_failures[0]["rule"] == f"DFT is not in {target}'s operator list"


def test_sigdl_retest_prices_the_dft_nodes_as_dfts_not_unknown_ops(fft_lenet, capsys):
    code = main(["retest", fft_lenet, "--target", "host", "--threads", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["operators"]["passed"]
    assert report["operators"]["unknown"] == []
    dfts = [layer for layer in report["layers"] if layer["op"] == "DFT"]
    assert len(dfts) == 8 and {layer["class"] for layer in dfts} == {"dft"}
    graph = analyze(onnx.load(fft_lenet))
    counted = {n.name: n.total_ops for n in graph.nodes if n.op_type == "DFT"}
    assert {layer["name"]: layer["ops"] for layer in dfts} == counted  # not in + out elements
    assert all(layer["ms"] > 0 for layer in dfts)
    assert sum(layer["ms"] for layer in dfts) < report["latency_ms"]

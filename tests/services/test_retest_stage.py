"""The retest stage on real models: ONNX analysis, latency/power/memory prediction, operator
checks, the gate, accuracy with the target's numerics (ONNX Runtime), and the model sources
(model.onnx, .sdc, checkpoint directory, s3://). S3 runs against the real SeaweedFS server of
the `s3_server` fixture (tests/conftest.py)."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from services.retest.accuracy import sharded_accuracy
from services.retest.gate import gate, parse_requirement
from services.retest.graph import analyze
from services.retest.opcheck import check_operators
from services.retest.stage import load_target, run_retest
from sigdl.core import checkpoint, onnx_io, store
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError
from sigdl.core.events import ProgressEvent
from sigdl.core.sdc import write_sdc


def _meta(model: str) -> ModelMeta:
    return ModelMeta(model=model, input_size=28, channels=1, classes=10, mean=[0.13],
                     std=[0.31], dataset="mnist")  # fmt: skip


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet-5 and LeNet-300-100 with seeded random weights as model.onnx files."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("lenet-5", "lenet-300-100"):
        torch.manual_seed(0)
        meta = _meta(name)
        paths[name] = onnx_io.export_onnx(
            checkpoint.build(meta),
            folder / f"{name}.onnx",
            meta.input_shape,
            {"sigdl.model_json": meta.to_json()},
        )
    return paths


def test_lenet5_work_and_memory_match_hand_counts(lenet):
    graph = analyze(onnx.load(lenet["lenet-5"]))
    macs = {n.name.split("/")[-2]: n.macs for n in graph.nodes if n.macs}
    # conv1 20x24x24 outputs x 1x5x5, conv2 50x8x8 x 20x5x5, fc1 800->500, fc2 500->10
    assert macs == {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}
    assert graph.weight_elems == 431_080 + 2  # parameters + the normalization's mean and std
    assert graph.peak_activation_elems >= 20 * 24 * 24  # conv1's output is live at some point


def _conv_graph(kernel: int, stride: int, group: int = 1, channels: int = 8) -> onnx.ModelProto:
    w = numpy_helper.from_array(
        np.zeros((channels, channels // group, kernel, kernel), np.float32), "w"
    )
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        group=group,
        name="the_conv",
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip


@pytest.mark.parametrize(
    ("target", "kernel", "stride", "group", "passes", "rule"),
    [
        ("ti-c66x", 7, 2, 1, False, "kernel 7x7s2 not in"),  # TIDL: stride 2 needs kernel < 7
        ("ti-c66x", 11, 4, 1, True, None),
        ("ti-c66x", 5, 2, 8, False, "depthwise kernel 5x5s2 not in"),
        ("movidius-ma2450", 7, 2, 1, True, None),
        ("movidius-ma2450", 5, 1, 8, False, "depthwise kernel 5x5s1"),  # NCSDK: 3x3 only
        ("movidius-ma2450", 9, 1, 1, False, "kernel 9x9s1 not in"),
        ("jetson-tx2", 9, 3, 1, True, None),
    ],
)  # fmt: skip
def test_operator_constraints_name_the_node_and_the_rule(target, kernel, stride, group,
                                                         passes, rule):  # fmt: skip
    result = check_operators(analyze(_conv_graph(kernel, stride, group)), load_target(target))
    assert result["passed"] is passes
    if not passes:
        (failure,) = result["failures"]
        assert failure["node"] == "the_conv" and failure["op"] == "Conv"
        assert rule in failure["rule"]


def test_myriad_refuses_fully_connected_inputs_not_a_multiple_of_8(lenet):
    result = check_operators(analyze(onnx.load(lenet["lenet-300-100"])),
                             load_target("movidius-ma2450"))  # fmt: skip
    assert [(f["node"], f["rule"]) for f in result["failures"]] == [
        ("/net/fc2/Gemm", "input size 300 is not a multiple of 8"),
        ("/net/fc3/Gemm", "input size 100 is not a multiple of 8"),
    ]


@pytest.mark.parametrize("target", ["host", "arm-cortex-a53", "movidius-ma2450", "ti-c66x"])
def test_constant_nodes_are_data_not_operators(target):
    """torch.onnx writes ReLU6's bounds as Constant nodes feeding Clip (MobileNet v2): a runtime
    folds them, so a target must not be failed for not listing `Constant`."""
    nodes = [
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.float32(6))),
        helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="relu6"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = check_operators(analyze(model), load_target(target))
    assert "Constant" not in result["op_types"] and result["checked"] == 1
    assert not [f for f in result["failures"] if f["op"] == "Constant"], result["failures"]


@pytest.mark.parametrize("text", ["fps>>30", "fps", "speed>=3", ">=3", "fps>=fast"])
def test_bad_requirements_are_input_errors(text):
    with pytest.raises(InputError, match="requirement"):
        parse_requirement(text)


def test_the_gate_lists_every_requirement_with_its_value():
    report = {"fps": 40.0, "power_w": 12.0, "memory": {"memory_mb": 3.0, "ram_mb": 8,
              "fits_ram": True}, "operators": {"passed": True, "failures": []}}  # fmt: skip
    verdict = gate(report, [parse_requirement("fps>=30"), parse_requirement("power_w<=10")])
    assert not verdict["passed"]
    assert [(c["requirement"], c["value"], c["passed"]) for c in verdict["checks"][2:]] == [
        ("fps>=30", 40.0, True), ("power_w<=10", 12.0, False)]  # fmt: skip


def test_retest_on_host_writes_report_and_verdict(lenet, tmp_path):
    events = []
    report = run_retest(
        str(lenet["lenet-5"]),
        "host",
        tmp_path / "rt",
        threads=1,
        requirements=["fps>=1", "memory_mb<=64"],
        on_event=events.append,
    )
    for key in ("target", "precision", "latency_ms", "fps", "power_w", "energy_mj", "memory",
                "operators", "verdict"):  # fmt: skip
        assert key in report, key
    assert report["target"] == "host" and report["precision"] == "fp32"
    assert report["verdict"]["passed"] and report["operators"]["passed"]
    assert report["measured"]["queries"] >= 30 and report["measured_p90_latency_ms"] > 0
    assert report["power"]["estimate"] is True
    written = json.loads((tmp_path / "rt" / "report.json").read_text())
    assert written["latency_ms"] == report["latency_ms"]
    assert "| fps>=1 |" in (tmp_path / "rt" / "verdict.md").read_text()
    assert ProgressEvent("predict", 1, 1) in events
    assert [e.kind for e in events][:3] == ["load", "predict", "measure"]


def test_the_retest_is_logged_to_mlflow(lenet, mlflow_uri):
    report = run_retest(str(lenet["lenet-5"]), "jetson-tx2:maxq", requirements=["fps>=1"])
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_uri).get_run(report["mlflow"]["run_id"])
    assert run.data.tags["sigdl.stage"] == "retest"
    assert run.data.tags["sigdl.target"] == "jetson-tx2:maxq"
    assert run.data.metrics["latency_ms"] == pytest.approx(report["latency_ms"])
    assert run.data.metrics["passed"] == 1.0


def test_a_failed_gate_is_a_verdict_not_an_error(lenet):
    report = run_retest(str(lenet["lenet-5"]), "arm-cortex-a53", requirements=["fps>=1e9"])
    assert not report["verdict"]["passed"]
    assert report["verdict"]["checks"][-1]["requirement"] == "fps>=1e+09"


def test_targets_differ_in_the_direction_their_data_sheets_say(lenet):
    """Same model: the 4-core A72 beats the A53, Max-Q is slower than MAXN on the TX2."""
    model = str(lenet["lenet-5"])
    a53, a72 = (run_retest(model, t)["latency_ms"] for t in ("arm-cortex-a53", "arm-cortex-a72"))
    maxn, maxq = (run_retest(model, t)["latency_ms"] for t in ("jetson-tx2", "jetson-tx2:maxq"))
    assert a72 < a53 and maxn < maxq


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "tpu"}, "unknown target 'tpu'"),
        ({"target": "ti-c66x", "precision": "fp32"}, "supports int8"),
        ({"target": "host", "requirements": ["accuracy_drop<=0.5"]}, "need a data set"),
        ({"target": "host", "workers": 0}, "workers=0"),
        ({"target": "host", "precision": "bf16"}, "bf16"),
    ],
)
def test_bad_input_is_an_input_error(lenet, kwargs, match):
    with pytest.raises(InputError, match=match):
        run_retest(str(lenet["lenet-5"]), **kwargs)


def test_a_missing_model_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_retest(str(tmp_path / "nothing.onnx"), "host")


def test_sharded_accuracy_equals_single_process_accuracy(lenet, shared_data):
    single = sharded_accuracy(lenet["lenet-5"], "mnist", workers=1, threads=2)
    sharded = sharded_accuracy(lenet["lenet-5"], "mnist", workers=2, threads=1)
    assert sharded["total"] == single["total"] == 10_000
    assert np.array_equal(sharded["predictions"], single["predictions"])
    assert sharded["correct"] == single["correct"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_accuracy_runs_with_the_targets_numerics(lenet, shared_data, precision):
    report = run_retest(str(lenet["lenet-300-100"]), "host", dataset="mnist", threads=1,
                        precision=precision, requirements=["accuracy_drop<=100"])  # fmt: skip
    acc = report["accuracy"]
    assert acc["total"] == 10_000 and 0 <= acc["accuracy"] <= 1
    assert acc["drop_pp"] == pytest.approx(100 * (acc["fp32_accuracy"] - acc["accuracy"]))
    assert report["precision"] == precision
    if precision == "int8":
        assert report["calibration"] == "mnist train[:256]"


def test_sdc_and_checkpoint_directory_sources(tmp_path):
    torch.manual_seed(1)
    meta = _meta("lenet-5")
    model = checkpoint.build(meta)
    header = {k: v for k, v in meta.to_json().items() if k not in ("train_config", "metrics")}
    write_sdc(tmp_path / "model.sdc", model.state_dict(), header)
    from_sdc = run_retest(str(tmp_path / "model.sdc"), "ti-c66x")
    assert from_sdc["size_kb"] == pytest.approx((tmp_path / "model.sdc").stat().st_size / 1024)
    assert from_sdc["source"]["kind"] == "sdc" and from_sdc["model"] == "lenet-5"
    checkpoint.save_checkpoint(model, meta, tmp_path / "run")
    from_dir = run_retest(str(tmp_path / "run"), "ti-c66x")
    assert from_dir["source"]["kind"] == "checkpoint"
    assert from_dir["latency_ms"] == pytest.approx(from_sdc["latency_ms"])


def test_a_model_from_s3(s3_server, monkeypatch, lenet):
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    store.S3Backend().client.make_bucket("retest-models")
    store.put_file("s3://retest-models/lenet/model.onnx", lenet["lenet-5"])
    report = run_retest("s3://retest-models/lenet/model.onnx", "jetson-tx2")
    assert report["model"] == "lenet-5" and report["latency_ms"] > 0
    with pytest.raises(store.ArtifactNotFoundError):
        run_retest("s3://retest-models/nothing/model.onnx", "jetson-tx2")


def test_without_a_curve_p90_is_the_profiles_factor_times_the_latency_plus_extra(lenet):
    from services.retest.predict import predict_latency

    graph = analyze(onnx.load(lenet["lenet-5"]))
    profile = load_target("host")
    calibrated = profile["latency_model"]["calibrated"]["1"]
    calibrated.pop("p90_curve", None)  # the curve, when a profile has one, comes first
    calibrated.update(p90_factor=1.25, p90_extra_us=40.0)
    p = predict_latency(graph, profile, "fp32", 1)
    assert p["p90_latency_ms"] == pytest.approx(p["latency_ms"] * 1.25 + 0.040)


def test_query_times_and_the_profiled_kernel_times_of_a_real_session(lenet, tmp_path):
    """One real ONNX Runtime session with its profiler on: every timed query is counted, and
    the trace names each executed node with its op type and one kernel time per query."""
    from services.retest.measure import node_kernels, open_session, query_times, summarize

    sess, feed = open_session(lenet["lenet-5"].read_bytes(), 1, profile_prefix=str(tmp_path / "p"))
    ms = query_times(sess, feed, warmup=2, min_queries=7, min_seconds=0.0)
    kernels = node_kernels(sess.end_profiling())
    assert len(ms) == 7 and (ms > 0).all()
    stats = summarize(ms, 1)
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms and stats.queries == 7
    ops = {node["op"] for node in kernels.values()}
    assert {"Conv", "MaxPool"} <= ops  # the graph's convolutions and pools ran
    assert all(len(node["us"]) == 9 for node in kernels.values())  # 2 warm-up + 7 timed


def test_the_p90_curve_is_interpolated_in_log_time_and_flat_beyond_its_ends():
    from services.retest.predict import p90_ms

    params = {"p90_curve": [[10.0, 1.2], [0.1, 1.6]], "p90_factor": 9.0, "p90_extra_us": 9.0}
    assert p90_ms(1.0, params) == pytest.approx(1.0 * 1.4)  # halfway between in log(ms)
    assert p90_ms(0.01, params) == pytest.approx(0.01 * 1.6)
    assert p90_ms(100.0, params) == pytest.approx(100.0 * 1.2)


def test_weights_and_activations_move_at_the_bandwidth_of_the_level_they_fit(lenet):
    """LeNet-5's 1.7 MB of fp32 weights: from DRAM without a cache level, from the cache when
    they fit it, from on-chip memory when they fit there; each faster than the last."""
    from services.retest.predict import predict_latency

    graph = analyze(onnx.load(lenet["lenet-5"]))
    profile = load_target("arm-cortex-a53")
    memory, model = profile["memory"], profile["latency_model"]
    memory["onchip_kb"] = 512
    model.update(bandwidth_gbs=2.0, cache_bandwidth_gbs=20.0, onchip_bandwidth_gbs=200.0)
    dram = predict_latency(graph, profile, "fp32", None)
    memory["cache_kb"] = 4096
    cache = predict_latency(graph, profile, "fp32", None)
    memory["onchip_kb"] = 4096
    onchip = predict_latency(graph, profile, "fp32", None)
    assert dram["latency_ms"] > cache["latency_ms"] > onchip["latency_ms"]
    assert dram["dram_bytes"] > cache["dram_bytes"] == onchip["dram_bytes"]


def test_a_runtime_computing_convs_in_channel_blocks_pays_for_the_padded_channels(lenet):
    """ONNX Runtime's NCHWc convs on AVX-512 work in blocks of 16 channels: LeNet-5's conv2
    (20 -> 50 channels) costs as much as a 32 -> 64 one; a stem reading 1 channel pads only
    its outputs; a depthwise conv and every conv without a block pay nothing more."""
    from services.retest.graph import Node
    from services.retest.predict import channel_padding, predict_latency

    def conv(weight_shape: list[int], group: int = 1) -> Node:
        return Node("c", "Conv", "conv", [], [], {"group": group}, weight_shape=weight_shape)

    assert channel_padding(conv([50, 20, 5, 5]), 16) == pytest.approx(64 / 50 * 32 / 20)
    assert channel_padding(conv([20, 1, 5, 5]), 16) == pytest.approx(32 / 20)
    assert channel_padding(conv([64, 32, 3, 3]), 16) == 1.0
    assert channel_padding(conv([32, 1, 3, 3], group=32), 16) == 1.0
    assert channel_padding(conv([50, 20, 5, 5]), None) == 1.0
    profile = load_target("host")
    assert profile["latency_model"]["channel_block"] == 16
    graph = analyze(onnx.load(lenet["lenet-5"]))

    def layer_ms() -> dict[str, float]:
        return {x["name"]: x["ms"] for x in predict_latency(graph, profile, "fp32", 1)["layers"]}

    blocked = layer_ms()
    del profile["latency_model"]["channel_block"]
    plain = layer_ms()
    convs = [name for name in plain if "conv" in name.lower()]
    assert len(convs) == 2 and all(blocked[n] > plain[n] for n in convs)
    assert all(blocked[n] == plain[n] for n in plain if n not in convs)


def test_time_bound_by_dram_traffic_takes_the_profiles_dram_p90_factor(lenet):
    from services.retest.predict import p90_ms, predict_latency

    params = {"p90_curve": [[1.0, 1.2]], "p90_dram_factor": 1.6}
    assert p90_ms(10.0, params, dram_bound_ms=4.0) == pytest.approx(6.0 * 1.2 + 4.0 * 1.6)
    assert p90_ms(10.0, {"p90_curve": [[1.0, 1.2]]}, dram_bound_ms=4.0) == pytest.approx(12.0)
    # measured on 10 ms queries: a 100 ms query, whose curve tail (0.2) is half that at 10 ms
    # (0.4), has half the DRAM tail; a shorter one keeps the measured factor
    curve = {"p90_curve": [[1.0, 1.4], [10.0, 1.4], [100.0, 1.2]], "p90_dram_factor": 1.6,
             "p90_dram_ms": 10.0}  # fmt: skip
    assert p90_ms(100.0, curve, dram_bound_ms=40.0) == pytest.approx(60.0 * 1.2 + 40.0 * 1.3)
    assert p90_ms(5.0, curve, dram_bound_ms=2.0) == pytest.approx(3.0 * 1.4 + 2.0 * 1.6)
    # LeNet-300-100's weights stream from DRAM on a target with 2 GB/s: all of its nodes are
    # bound by DRAM, the fixed per-inference overhead is not
    graph = analyze(onnx.load(lenet["lenet-300-100"]))
    profile = load_target("arm-cortex-a53")
    profile["latency_model"].update(bandwidth_gbs=2.0, p90_factor=1.1, p90_extra_us=0.0,
                                    p90_dram_factor=1.5, fixed_overhead_us=100.0)  # fmt: skip
    p = predict_latency(graph, profile, "fp32", None)
    assert 0 < p["dram_bound_ms"] < p["latency_ms"]
    expected = (p["latency_ms"] - p["dram_bound_ms"]) * 1.1 + p["dram_bound_ms"] * 1.5
    assert p["p90_latency_ms"] == pytest.approx(expected)


def test_a_conv_pays_its_per_element_cost_and_its_unhidden_weight_streaming(lenet):
    """LeNet-5 on a target whose weights stream from DRAM: a per-activation-element cost
    adds exactly elements x ns to each conv, and a weight stall of s adds s x min(compute,
    weight streaming time) to each node with weights, nothing to the others."""
    from services.retest.predict import predict_latency

    graph = analyze(onnx.load(lenet["lenet-5"]))
    profile = load_target("arm-cortex-a53")
    profile["memory"]["onchip_kb"] = 64  # LeNet-5's 1.7 MB of weights stream from DRAM
    model = profile["latency_model"]

    def layer_ms() -> dict[str, float]:
        return {x["name"]: x["ms"] for x in predict_latency(graph, profile, "fp32", None)["layers"]}

    base = layer_ms()
    model["activation_ns"] = {"conv": 1.0}
    per_element = layer_ms()
    convs = {n.name: n for n in graph.nodes if n.op_class == "conv"}
    assert convs
    for name, ms in base.items():
        extra = (convs[name].in_elems + convs[name].out_elems) * 1e-6 if name in convs else 0.0
        assert per_element[name] == pytest.approx(ms + extra)
    del model["activation_ns"]
    model["weight_stall"] = 0.5
    stalled = layer_ms()
    with_weights = {n.name for n in graph.nodes if n.weight_elems and n.op_class != "free"}
    assert all(stalled[n] > base[n] for n in with_weights)
    assert all(stalled[n] == base[n] for n in base if n not in with_weights)


def test_a_model_larger_than_on_chip_memory_takes_the_cold_cache_figures(lenet):
    """The host profile's `cold` figures replace its per-class ones for LeNet-5 (1.7 MB of
    weights: more than the 1.25 MB of L2) and leave LeNet-300-100 (1.0 MB) on the others;
    classes the cold block leaves out (gemm) keep theirs."""
    from services.retest.predict import in_network, latency_params, predict_latency

    profile = load_target("host")
    assert profile["memory"]["onchip_kb"] == 1280
    big, small = (analyze(onnx.load(lenet[name])) for name in ("lenet-5", "lenet-300-100"))
    params = latency_params(profile, 1)
    params["cold"] = {"efficiency": {"conv": 0.01}, "overhead_us": {"pool": 50.0}}
    cold = in_network(big, params, "fp32")
    assert cold["efficiency"]["conv"] == 0.01 and cold["overhead_us"]["pool"] == 50.0
    assert cold["efficiency"]["gemm"] == params["efficiency"]["gemm"]
    assert in_network(small, params, "fp32") is params
    del params["cold"]
    assert in_network(big, params, "fp32") is params

    def layer_ms(graph) -> dict[str, tuple[str, float]]:
        layers = predict_latency(graph, profile, "fp32", 1)["layers"]
        return {x["name"]: (x["class"], x["ms"]) for x in layers}

    block = profile["latency_model"]["calibrated"]["1"]
    block.pop("cold", None)
    before_big, before_small = layer_ms(big), layer_ms(small)
    block["cold"] = {"efficiency": {"conv": block["efficiency"]["conv"] / 2}}
    after_big = layer_ms(big)
    for name, (klass, ms) in before_big.items():
        assert (after_big[name][1] > ms) if klass == "conv" else (after_big[name][1] == ms)
    assert layer_ms(small) == before_small


def test_a_node_that_moves_no_data_costs_the_profiles_free_node_time(lenet):
    """LeNet-300-100's Flatten: nothing without `free_node_us`, exactly that with it."""
    from services.retest.predict import predict_latency

    graph = analyze(onnx.load(lenet["lenet-300-100"]))
    free = [n for n in graph.nodes if n.op_class == "free" and not n.fused_into]
    assert [n.op_type for n in free] == ["Flatten"]
    profile = load_target("host")
    block = profile["latency_model"]["calibrated"]["1"]
    block.pop("free_node_us", None)
    before = predict_latency(graph, profile, "fp32", 1)["latency_ms"]
    block["free_node_us"] = 5.0
    after = predict_latency(graph, profile, "fp32", 1)["latency_ms"]
    assert after - before == pytest.approx(5e-3)


def test_a_broadcast_op_with_few_spans_runs_on_one_thread(lenet):
    """ONNX Runtime cuts Sub of a per-channel mean into one span per channel: an RGB image's
    3 spans run on one thread, 4 or more on all of them; a scalar operand is one span, split
    across all threads. Only a profile with `broadcast_spans_per_thread` says so."""
    from services.retest.graph import Node
    from services.retest.predict import broadcast_spans, parallel_threads, predict_latency

    def sub(shape: list[int], operand: list[int]) -> Node:
        return Node("s", "Sub", "elementwise", [], [], in_shape=shape, weight_shape=operand)

    assert broadcast_spans(sub([1, 3, 224, 224], [1, 3, 1, 1])) == 3
    assert broadcast_spans(sub([1, 4, 194, 194], [4, 1, 1])) == 4
    assert broadcast_spans(sub([1, 1, 28, 28], [1, 1, 1, 1])) == 1
    assert broadcast_spans(sub([1, 8, 16, 16], [1, 8, 16, 16])) == 1
    assert broadcast_spans(sub([1, 8, 16, 16], [16])) == 128  # a row per (channel, line)
    rgb, params = sub([1, 3, 224, 224], [1, 3, 1, 1]), {"broadcast_spans_per_thread": 2}
    assert parallel_threads(rgb, {**params, "threads": 2}) == 1
    assert parallel_threads(rgb, {**params, "threads": 1}) == 1
    assert parallel_threads(sub([1, 4, 194, 194], [1, 4, 1, 1]), {**params, "threads": 2}) == 2
    assert parallel_threads(rgb, {"threads": 2}) == 2
    profile = load_target("host")
    assert profile["latency_model"]["broadcast_spans_per_thread"] == 2
    graph = analyze(onnx.load(lenet["lenet-5"]))  # 1 channel: one span, all threads

    def sub_ms() -> float:
        layers = predict_latency(graph, profile, "fp32", 2)["layers"]
        return next(x["ms"] for x in layers if x["op"] == "Sub")

    serial = sub_ms()
    del profile["latency_model"]["broadcast_spans_per_thread"]
    assert sub_ms() == serial
    from benchmarks.calibrate_host import eltwise_model  # one Sub of a 3-channel mean

    graph = analyze(onnx.load_from_string(eltwise_model("Sub", 3, 224, 1)))
    parallel = sub_ms()
    profile["latency_model"]["broadcast_spans_per_thread"] = 2
    overhead = profile["latency_model"]["calibrated"]["2"]["overhead_us"]["elementwise"] * 1e-3
    assert sub_ms() - overhead == pytest.approx(2 * (parallel - overhead))


def test_a_gemm_gets_a_thread_per_65536_multiplies_and_costs_what_it_costs_on_them(lenet):
    """ONNX Runtime's MLAS runs a gemm on M*N*K / 65536 + 1 threads: LeNet-300-100's fc1
    (784x300) on both of two, fc2 (300x100) and fc3 (100x10) on one, where they cost what the
    profile says they cost at 1 thread. Only a profile with `gemm_macs_per_thread` says so."""
    from services.retest.predict import parallel_threads, predict_latency

    profile = load_target("host")
    assert profile["latency_model"]["gemm_macs_per_thread"] == 65536
    graph = analyze(onnx.load(lenet["lenet-300-100"]))
    gemms = {n.name: n for n in graph.nodes if n.op_class == "gemm"}
    params = {"threads": 2, "gemm_macs_per_thread": 65536}
    assert [parallel_threads(n, params) for n in gemms.values()] == [2, 1, 1]
    assert [parallel_threads(n, {"threads": 2}) for n in gemms.values()] == [2, 2, 2]

    def gemm_ms(threads: int) -> list[float]:
        layers = predict_latency(graph, profile, "fp32", threads)["layers"]
        return [x["ms"] for x in layers if x["name"] in gemms]

    one, two = gemm_ms(1), gemm_ms(2)
    assert two[1:] == pytest.approx(one[1:]) and two[0] != pytest.approx(one[0])
    del profile["latency_model"]["gemm_macs_per_thread"]
    assert gemm_ms(2)[1:] != pytest.approx(one[1:])


def _layered(layers: list[tuple], c_in: int, size: int) -> onnx.ModelProto:
    """A small graph from (op, args) layers, each reading the previous output: ("conv",
    c_out, k), ("relu",), ("maxpool",), ("gap",), ("flatten",), ("gemm", n_out), ("fire",
    c_out) (two convs of the input, 1x1 and 3x3, concatenated), ("out",) (ends the graph)."""
    rng = np.random.default_rng(0)
    nodes, inits, x, c, s = [], [], "x", c_in, size

    def weight(name: str, shape: list[int]) -> str:
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(values, name))
        return name

    def conv(src: str, c_out: int, k: int, name: str) -> str:
        nodes.append(helper.make_node(
            "Conv", [src, weight(f"{name}w", [c_out, c, k, k]), weight(f"{name}b", [c_out])],
            [name], kernel_shape=[k, k], pads=[k // 2] * 4))  # fmt: skip
        return name

    for i, (op, *args) in enumerate(layers):
        name = f"t{i}"
        if op == "conv":
            x, c = conv(x, args[0], args[1], name), args[0]
            continue
        if op == "fire":
            a, b = conv(x, args[0] // 2, 1, f"{name}a"), conv(x, args[0] // 2, 3, f"{name}b")
            nodes.append(helper.make_node("Concat", [a, b], [name], axis=1))
            x, c = name, args[0]
            continue
        if op == "gemm":
            nodes.append(helper.make_node("Gemm", [x, weight(f"{name}w", [args[0], c * s * s]),
                                                   weight(f"{name}b", [args[0]])], [name],
                                          transB=1))  # fmt: skip
            x = name
            continue
        kinds = {"relu": ("Relu", {}), "maxpool": ("MaxPool", {"kernel_shape": [2, 2],
                 "strides": [2, 2]}), "gap": ("GlobalAveragePool", {}),
                 "flatten": ("Flatten", {})}  # fmt: skip
        op_type, attrs = kinds[op]
        nodes.append(helper.make_node(op_type, [x], [name], **attrs))
        s = s // 2 if op == "maxpool" else 1 if op == "gap" else s
        x = name
    graph = helper.make_graph(
        nodes, "layered", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         [1, c_in, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], initializer=inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort_reorders(model: onnx.ModelProto, folder) -> list[str]:
    """The Reorder nodes of ONNX Runtime's own optimized graph of `model` (default level)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(folder / "optimized.onnx"))
    return sorted(n.op_type for n in optimized.graph.node if n.op_type.startswith("Reorder"))


def test_the_layout_reorders_are_the_ones_onnx_runtime_inserts(lenet, tmp_path):
    """The host profile's layout rule against ONNX Runtime's NCHWc transformer itself, on
    LeNet-5 (20 and 50 channels: three reorders) and on small graphs: an RGB stem read as
    it is, pools and GAP that stay blocked on 16-channel multiples, a fire module's Concat,
    a blocked graph output. Channel counts are whole blocks (or not) of both 8 and 16, so
    the check holds on AVX2 (8-wide blocks) as on AVX-512 (16)."""
    from services.retest.graph import apply_fusion
    from services.retest.predict import layout_reorders

    profile = load_target("host")
    fuses = profile["latency_model"]["fuses"]

    def predicted(model: onnx.ModelProto) -> list[str]:
        graph = analyze(model)
        apply_fusion(graph.nodes, fuses)
        return sorted(n.op_type for n in layout_reorders(graph, 16))

    models = {
        "lenet-5": onnx.load(lenet["lenet-5"]),
        "stem, pool, classifier": _layered([("conv", 16, 3), ("relu",), ("maxpool",),
                                            ("flatten",), ("gemm", 10)], 3, 16),
        "blocked input, GAP output": _layered([("conv", 32, 3), ("relu",), ("gap",)], 16, 8),
        "fire": _layered([("conv", 16, 1), ("relu",), ("fire", 32), ("maxpool",),
                          ("fire", 64), ("gap",), ("flatten",)], 32, 16),
        "20-channel pool": _layered([("conv", 20, 3), ("relu",), ("maxpool",), ("conv", 32, 3),
                                     ("gap",), ("flatten",)], 3, 16),
    }  # fmt: skip
    seen = {name: _ort_reorders(model, tmp_path) for name, model in models.items()}
    if not any(seen.values()):
        pytest.skip("this ONNX Runtime build runs no NCHWc convolutions")
    assert seen["lenet-5"] == ["ReorderInput", "ReorderOutput", "ReorderOutput"]
    assert {name: predicted(model) for name, model in models.items()} == seen
    graph = analyze(models["lenet-5"])
    apply_fusion(graph.nodes, fuses)
    elements = sorted(n.ops for n in layout_reorders(graph, 16))
    assert elements == sorted([20 * 24 * 24, 20 * 12 * 12, 50 * 8 * 8])
    assert layout_reorders(graph, None) == []


def test_the_host_prediction_counts_each_layout_reorder(lenet):
    """LeNet-5's three reorders are layers of class "reorder", each costing at least the
    class's overhead in the figures the model takes (the cold ones: it exceeds on-chip
    memory); without a channel block the model has none."""
    from services.retest.predict import in_network, latency_params, predict_latency

    profile = load_target("host")
    graph = analyze(onnx.load(lenet["lenet-5"]))
    with_blocks = predict_latency(graph, profile, "fp32", 1)
    reorders = [x for x in with_blocks["layers"] if x["class"] == "reorder"]
    assert len(reorders) == 3
    params = in_network(graph, latency_params(profile, 1), "fp32")
    overhead = params["overhead_us"].get("reorder", 0.0)
    assert all(x["ms"] >= overhead * 1e-3 and x["ms"] > 0 for x in reorders)
    del profile["latency_model"]["channel_block"]
    plain = predict_latency(analyze(onnx.load(lenet["lenet-5"])), profile, "fp32", 1)
    assert not [x for x in plain["layers"] if x["class"] == "reorder"]
    assert with_blocks["latency_ms"] > plain["latency_ms"]

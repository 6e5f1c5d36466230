"""Published board latencies: every file loads, cites its source, keeps the zoo out of fits."""

import copy

import pytest
import yaml

from targets import measurements as ms
from targets import profile_names
from targets.measurements import MeasurementError, fit_set, load_file, validation_set

BOARDS = ("jetson-tx2", "arm-cortex-a53", "arm-cortex-a72", "movidius-ma2450")
GOOD_ENTRY = {
    "model": "resnet-18",
    "role": "fit",
    "runtime": "ncnn",
    "precision": "fp32",
    "threads": 4,
    "batch": 1,
    "input_shape": [1, 3, 224, 224],
    "latency_ms": 233.89,
    "source": {"url": "https://example.org/table", "quote": "resnet18 avg = 233.89"},
}


def _write(tmp_path, entries, target="arm-cortex-a72", name=None, **top):
    data = {"target": target, "board": "a board", "entries": entries, **top}
    path = tmp_path / f"{name or target}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_board_of_the_issue_has_a_file_that_loads():
    assert set(ms.target_names()) >= set(BOARDS)
    for target in ms.target_names():
        assert target in profile_names(), target  # each file belongs to a shipped profile
        loaded = ms.measurements(target)
        assert loaded and all(m.target == target for m in loaded)
        assert all(m.batch == 1 for m in loaded), target  # the issue asks for batch-1 figures


def test_every_entry_has_a_source_with_a_quote():
    for target in ms.target_names():
        for m in ms.measurements(target):
            assert m.source.url or m.source.citation, (target, m.model)
            assert len(m.source.quote) > 10, (target, m.model)


def test_no_zoo_model_is_in_a_fit_set_and_only_zoo_models_validate():
    for target in ms.target_names():
        assert not [m.model for m in fit_set(target) if ms.is_zoo_model(m.model)], target
        assert all(m.is_zoo for m in validation_set(target)), target


def test_fit_and_validation_sets_partition_the_file():
    for target in ms.target_names():
        together = fit_set(target) + validation_set(target)
        assert sorted(map(id, together)) == sorted(map(id, ms.measurements(target)))


def test_the_cpu_boards_have_enough_figures_to_fit_and_validate():
    for target in ("jetson-tx2", "arm-cortex-a53", "arm-cortex-a72"):
        assert len(fit_set(target)) >= 6, target
        assert len(validation_set(target)) >= 3, target


def test_zoo_list_matches_the_zoo_registry():
    zoo = pytest.importorskip("sigdl.core.zoo")
    names = {name for spec in zoo.list_models() for name in (spec.name, *spec.aliases)}
    assert set(ms.ZOO_MODELS) == names


@pytest.mark.parametrize("name", ["mobilenet-v2", "vgg16", "squeezenet", "squeezenet-1.1"])
def test_a_zoo_model_marked_fit_is_refused(tmp_path, name):
    path = _write(tmp_path, [{**GOOD_ENTRY, "model": name}])
    with pytest.raises(MeasurementError, match=r"zoo model .* is marked 'fit'"):
        load_file(path)


def test_zoo_names_match_whatever_their_spelling():
    assert ms.is_zoo_model("MobileNet_V2") and ms.is_zoo_model("VGG16")
    assert not ms.is_zoo_model("mobilenet-v1-0.5-160") and not ms.is_zoo_model("resnet-18")


def test_a_non_zoo_model_marked_validation_is_refused(tmp_path):
    path = _write(tmp_path, [{**GOOD_ENTRY, "role": "validation"}])
    with pytest.raises(MeasurementError, match="not a zoo model"):
        load_file(path)


def _broken(field, value):
    entry = copy.deepcopy(GOOD_ENTRY)
    if value is None:
        del entry[field]
    else:
        entry[field] = value
    return entry


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (_broken("precision", "bf16"), "precision"),
        (_broken("role", "train"), "role"),
        (_broken("threads", 0), "threads"),
        (_broken("threads", True), "threads"),
        (_broken("latency_ms", -1), "latency_ms"),
        (_broken("latency_ms", "fast"), "latency_ms"),
        (_broken("input_shape", [3, 224, 224]), "input_shape"),
        (_broken("input_shape", [2, 3, 224, 224]), "input_shape"),
        (_broken("source", None), "source"),
        (_broken("source", {"url": "https://x.org"}), "quote"),
        (_broken("source", {"quote": "a row"}), "source"),
        (_broken("source", {"url": "file:///etc/passwd", "quote": "a row"}), "url"),
        (_broken("model", "ResNet 18"), "model"),
        (_broken("runtime", ""), "runtime"),
    ],
)
def test_a_malformed_entry_is_a_one_line_error_naming_the_field(tmp_path, entry, field):
    path = _write(tmp_path, [GOOD_ENTRY, entry])
    with pytest.raises(MeasurementError) as info:
        load_file(path)
    message = str(info.value)
    assert "\n" not in message and "entries[1]" in message and field in message


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda d: (d / "arm-cortex-a72.yaml").write_text("target: [unclosed\n"), "line"),
        (lambda d: _write(d, [GOOD_ENTRY], extra=1), "exactly target, board and entries"),
        (lambda d: _write(d, []), "'entries'"),
        (lambda d: _write(d, [GOOD_ENTRY], target="jetson-tx2", name="arm-cortex-a72"), "'target'"),
        (lambda d: None, "arm-cortex-a72.yaml"),  # no file at all
    ],
)
def test_a_malformed_file_is_a_one_line_error(tmp_path, write, expected):
    write(tmp_path)
    with pytest.raises(MeasurementError) as info:
        load_file(tmp_path / "arm-cortex-a72.yaml")
    message = str(info.value)
    assert "\n" not in message and expected in message and "arm-cortex-a72.yaml" in message


def test_an_unknown_target_lists_the_known_ones():
    with pytest.raises(MeasurementError, match=r"available: .*jetson-tx2"):
        fit_set("../arm-cortex-a72")

"""Target profiles: every shipped YAML validates, power modes apply, bad profiles name the field."""

import copy

import pytest
import yaml

import targets
from targets import ProfileError, load_file, load_profile, profile_names

ISSUE_TARGETS = {
    "jetson-tx2", "atom-x5-e3930", "atom-x5-e3940", "arm-cortex-a53", "arm-cortex-a72",
    "movidius-ma2450", "ti-c66x", "host",
}  # fmt: skip


def test_every_target_of_the_issue_is_shipped_and_valid():
    assert set(profile_names()) >= ISSUE_TARGETS
    for name in profile_names():
        profile = load_profile(name)
        assert profile["name"] == name
        assert profile["native_precision"] in profile["precisions"]
        for precision in profile["precisions"]:  # the latency model needs a peak per precision
            assert profile["compute"]["peak_gops"][precision] > 0, (name, precision)


def test_every_profile_cites_its_sources():
    for name in profile_names():
        text = (targets.HERE / f"{name}.yaml").read_text()
        assert "# Sources:" in text, name
        assert text.count("#") > 15, name  # numbers carry a comment naming their source


def test_jetson_power_modes_scale_the_clock_and_cap_the_power():
    maxn, maxq = load_profile("jetson-tx2"), load_profile("jetson-tx2:maxq")
    assert maxn["mode"] == "maxn" and maxq["mode"] == "maxq"
    ratio = maxq["compute"]["peak_gops"]["fp16"] / maxn["compute"]["peak_gops"]["fp16"]
    assert ratio == pytest.approx(0.85 / 1.30)
    assert maxq["power"]["active_w"] == 7.5 and maxn["power"]["active_w"] == 15.0


def test_unknown_target_and_mode_list_what_exists():
    with pytest.raises(ProfileError, match=r"unknown target 'tpu'.*jetson-tx2"):
        load_profile("tpu")
    with pytest.raises(ProfileError, match="no power mode 'turbo'; modes: maxn, maxp, maxq"):
        load_profile("jetson-tx2:turbo")


def _write(tmp_path, profile: dict):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda p: p["compute"].pop("clock_ghz"), "compute"),
        (lambda p: p["compute"].__setitem__("clock_ghz", "fast"), "compute.clock_ghz"),
        (lambda p: p["memory"].__setitem__("ram_mb", -1), "memory.ram_mb"),
        (lambda p: p.__setitem__("precisions", ["fp8"]), "precisions.0"),
        (lambda p: p["latency_model"]["efficiency"].__setitem__("lstm", 0.5),
         "latency_model.efficiency"),
        (lambda p: p["operators"]["supported"].__setitem__("Conv", {"allowed": ["3x3"]}),
         "operators.supported.Conv"),
    ],
)  # fmt: skip
def test_a_bad_profile_is_refused_naming_the_field(tmp_path, edit, field):
    profile = yaml.safe_load((targets.HERE / "ti-c66x.yaml").read_text())
    load_file(_write(tmp_path, profile))  # the shipped profile itself is fine
    broken = copy.deepcopy(profile)
    edit(broken)
    with pytest.raises(ProfileError, match=f"field '{field}'"):
        load_file(_write(tmp_path, broken))


def test_native_precision_must_be_supported(tmp_path):
    profile = yaml.safe_load((targets.HERE / "ti-c66x.yaml").read_text())
    profile["native_precision"] = "fp16"
    with pytest.raises(ProfileError, match="native_precision"):
        load_file(_write(tmp_path, profile))

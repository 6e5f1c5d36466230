import json

import pytest
import torch

from sigdl.core import atomic, checkpoint
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError


def _meta(**kw) -> ModelMeta:
    base = dict(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.1], std=[0.3])
    return ModelMeta(**{**base, **kw})


def test_round_trip_is_exact_and_data_only(tmp_path):
    torch.manual_seed(1)
    model = checkpoint.build(_meta())
    digest = checkpoint.save_checkpoint(model, _meta(), tmp_path)
    loaded, meta = checkpoint.load_checkpoint(tmp_path)
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    assert meta.input_shape == [1, 1, 28, 28]
    # the weights file is safetensors, not a pickle: its header is JSON after an 8-byte length
    raw = (tmp_path / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "net.conv1.weight" in header
    assert json.loads((tmp_path / "model.json").read_text())["weights_sha256"] == digest


def test_normalization_is_inside_the_model():
    model = checkpoint.build(_meta(mean=[0.5], std=[0.25])).eval()
    pixels = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(pixels), model.net((pixels - 0.5) / 0.25))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "other/v9"}), "expected 'sigdl.core.checkpoint/v1'"),
        (json.dumps({"format": "sigdl.core.checkpoint/v1", "model": "lenet-5"}), "missing field"),
    ],
)
def test_bad_model_json_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(InputError, match=message):
        checkpoint.load_checkpoint(tmp_path)


def test_weights_of_another_model_are_refused(tmp_path):
    checkpoint.save_checkpoint(checkpoint.build(_meta()), _meta(), tmp_path)
    other = _meta(model="lenet-300-100").to_json() | {"format": "sigdl.core.checkpoint/v1"}
    (tmp_path / "model.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="does not match model 'lenet-300-100'"):
        checkpoint.load_checkpoint(tmp_path)


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(InputError, match=r"no model\.json"):
        checkpoint.load_checkpoint(tmp_path)


def test_failed_job_leaves_previous_artifacts_intact(tmp_path):
    (tmp_path / "report.json").write_text("previous")
    with pytest.raises(RuntimeError), atomic.staged_dir(tmp_path) as stage:
        (stage / "report.json").write_text("half-done")
        raise RuntimeError("job failed")
    assert (tmp_path / "report.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic.staged_dir(tmp_path) as stage:
        (stage / "report.json").write_text("new")
    assert (tmp_path / "report.json").read_text() == "new"


def test_unwritable_out_dir(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match=r"cannot be created|not a directory"):
        atomic.check_writable_dir(target / "sub")

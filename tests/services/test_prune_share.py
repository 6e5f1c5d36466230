"""Pruning and trained weight sharing: the primitives on known data, masks and codebooks kept
exactly through `fit`, sensitivity tables, and a short Deep Compression recipe end to end on
digits (LeNet-300-100 trained for 3 epochs)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from services.compression.engine import (
    compress,
    layer_bits,
    plan_recipe,
    prune_channels,
    relative_index_symbols,
)
from services.compression.prune import (
    MaskKeeper,
    agp_sparsity,
    apply_mask,
    channel_groups,
    channel_scores,
    channels_to_keep,
    find_layers,
    magnitude_mask,
    magnitude_threshold,
    remove_channels,
    sensitivity,
    sparsity_mask,
)
from services.compression.recipe import Recipe
from services.compression.share import (
    CentroidTrainer,
    SharedWeight,
    kmeans_1d,
    project,
    share_weights,
)
from services.training.stage import run_training
from sigdl.core import zoo
from sigdl.core.checkpoint import load_checkpoint, resize_to_state_dict
from sigdl.core.datasets import load_dataset
from sigdl.core.errors import InputError
from sigdl.core.training import TrainConfig, fit


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet-300-100")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=3), out)
    return out


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- primitives ------------------------------------------------------------------------------


def test_magnitude_threshold_is_quality_times_std_of_unpruned_weights():
    w = torch.tensor([[0.0, -2.0, 1.0], [0.5, 0.0, -0.25]])
    alive = np.array([-2.0, 1.0, 0.5, -0.25])
    threshold = magnitude_threshold(w, 1.5)
    assert threshold == pytest.approx(1.5 * alive.std())
    keep = magnitude_mask(w, threshold)
    assert threshold == pytest.approx(1.7056, abs=1e-4)  # only |-2| is above it
    assert keep.tolist() == [[False, True, False], [False, False, False]]


def test_sparsity_mask_zeroes_exactly_the_smallest():
    w = torch.randn(40, 25, generator=torch.Generator().manual_seed(0))
    keep = sparsity_mask(w, 0.9)
    assert int((~keep).sum()) == 900
    assert w[keep].abs().min() >= w[~keep].abs().max()
    apply_mask(w, keep)
    assert torch.equal(bits_of(w[~keep]), torch.zeros(900, dtype=torch.int32))  # +0.0, not -0.0


def test_agp_schedule_is_cubic_and_ends_at_the_target():
    values = [agp_sparsity(0.0, 0.9, t, 3) for t in (0, 1, 2, 3)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.9)
    assert values[1] == pytest.approx(0.9 * (1 - (2 / 3) ** 3))
    assert values[1] - values[0] > values[2] - values[1] > values[3] - values[2]  # fast first


def test_kmeans_1d_on_known_clusters():
    gen = torch.Generator().manual_seed(1)
    means = torch.tensor([-1.0, 0.5, 2.0])
    truth = torch.randint(0, 3, (3000,), generator=gen)
    values = means[truth] + 0.05 * torch.randn(3000, generator=gen)
    centroids, labels = kmeans_1d(values, 3)
    assert centroids.dtype == torch.float32 and torch.all(centroids[1:] >= centroids[:-1])
    assert torch.equal(labels, truth)
    for k in range(3):
        assert centroids[k] == pytest.approx(float(values[truth == k].mean()), abs=1e-5)
    # linear initialization: evenly spaced between min and max, so 0 iterations are just that
    start, _ = kmeans_1d(values, 5, iterations=0)
    expected = torch.linspace(float(values.min()), float(values.max()), 5)
    assert torch.allclose(start, expected)


def test_share_weights_keeps_zeros_and_is_exact():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(2))
    apply_mask(w, sparsity_mask(w, 0.5))
    codebook, assignments = share_weights(w, bits=3)
    assert codebook.shape == (8,) and codebook[0].item() == 0.0
    assert torch.equal(assignments == 0, w == 0)  # pruned <-> entry 0
    dense = codebook[assignments]
    assert len(torch.unique(dense)) <= 8
    assert (dense - w).abs().max() < (w.max() - w.min()) / 7  # nearest of 7 centroids


def test_centroid_update_is_the_summed_gradient():
    """With plain SGD, centroid k moves by -lr x the sum of its members' gradients (the paper)."""
    torch.manual_seed(3)
    layer = nn.Linear(16, 8)
    layers = find_layers(nn.Sequential(layer))  # one layer named "0"
    (key,) = layers
    codebook, assignments = share_weights(layer.weight, bits=2)
    shared = SharedWeight(codebook.clone(), assignments, 2)
    project(layer.weight, shared)
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    nn.functional.mse_loss(layer(x), y).backward()
    grad = layer.weight.grad.flatten()
    expected = codebook - 0.1 * torch.zeros(4).index_add_(0, assignments.flatten(), grad)
    expected[0] = 0.0
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    CentroidTrainer(layers, {key: shared})()
    assert torch.allclose(shared.codebook, expected, atol=1e-6)
    assert torch.equal(bits_of(layer.weight), bits_of(shared.dense()))


def test_relative_indices_use_filler_entries():
    # 3-bit indices span 8: a gap of 20 needs two fillers (8 + 8) before the real entry (4)
    last, fillers = relative_index_symbols(np.array([0, 3, 23]), 3)
    assert last.tolist() == [1, 3, 4] and fillers == 2
    dense = layer_bits(np.arange(100), 32, 0, 5, huffman=False)
    assert dense == 100 * 32  # no zeros: storing it dense is cheaper than relative indices


# --- through the trainer ---------------------------------------------------------------------


def test_masks_and_codebooks_survive_fit(checkpoint_dir, digits):
    model, meta = load_checkpoint(checkpoint_dir)
    layers = find_layers(model)
    fc1, fc2 = layers["net.fc1.weight"], layers["net.fc2.weight"]
    masks = {fc1.key: sparsity_mask(fc1.weight, 0.8)}
    apply_mask(fc1.weight, masks[fc1.key])
    codebook, assignments = share_weights(fc2.weight, bits=4)
    shared = {fc2.key: SharedWeight(codebook, assignments, 4)}
    project(fc2.weight, shared[fc2.key])
    before = fc2.weight.detach().clone()
    cfg = TrainConfig(model=meta.model, dataset="digits", epochs=1, lr=0.01, weight_decay=1e-3)
    hooks = [MaskKeeper(layers, masks), CentroidTrainer(layers, shared)]
    fit(model, digits.train, cfg, meta.channels, meta.input_size, after_step=hooks)
    pruned = ~masks[fc1.key]
    assert not bits_of(fc1.weight[pruned]).any()  # +0.0 bitwise
    assert torch.count_nonzero(fc1.weight[~pruned]) > 0.99 * int((~pruned).sum())
    assert torch.equal(bits_of(fc2.weight), bits_of(shared[fc2.key].dense()))
    assert len(torch.unique(fc2.weight)) <= 16
    assert not torch.equal(fc2.weight, before)  # the centroids did train


def test_sensitivity_table_and_files(checkpoint_dir, digits, tmp_path):
    model, meta = load_checkpoint(checkpoint_dir)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    table = sensitivity(model, digits.test, meta, ["fc1", "fc3"], [0.0, 0.5, 0.99])
    assert table.accuracy["fc1"][0] == table.baseline > 0.5
    assert table.accuracy["fc3"][-1] < table.baseline  # 99% of the last layer gone hurts
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # restored
    names = {p.name for p in table.write(tmp_path)}
    assert {"sensitivity.json", "sensitivity.md"} <= names
    assert "| fc1 |" in (tmp_path / "sensitivity.md").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "sensitivity.png").stat().st_size > 0


# --- end to end ------------------------------------------------------------------------------

SHORT_RECIPE = {
    "name": "short",
    "steps": [
        {"type": "prune", "layers": ["fc1"], "sparsity": 0.9, "retrain": {"epochs": 1}},
        {"type": "share", "bits": {"fc": 5}, "retrain": {"epochs": 1, "lr": 0.001}},
        {"type": "huffman"},
    ],
}


def test_short_recipe_end_to_end(checkpoint_dir, digits):
    model, meta = load_checkpoint(checkpoint_dir)
    events = []
    result = compress(model, Recipe.from_dict(SHORT_RECIPE), digits, meta, on_event=events.append)
    ladder = result.ladder
    assert [row["step"] for row in ladder] == ["dense", "prune", "share", "huffman"]
    dense, final = ladder[0]["accuracy"], ladder[-1]["accuracy"]
    assert dense > 0.85 and final > dense - 0.03
    assert ladder[-1]["estimated_ratio"] > ladder[1]["estimated_ratio"] > 1
    assert result.huffman and result.index_bits == {k: 5 for k in result.shared}

    fc1 = model.net.fc1.weight
    assert int((fc1 == 0).sum()) == round(0.9 * fc1.numel())
    assert torch.equal(result.masks["net.fc1.weight"], fc1 != 0)
    assert set(result.shared) == {"net.fc1.weight", "net.fc2.weight", "net.fc3.weight"}
    state = model.state_dict()
    for key, (codebook, assignments) in result.shared.items():
        assert codebook.dtype == np.float32 and codebook[0] == 0.0 and len(codebook) == 32
        assert assignments.dtype == np.uint8 and assignments.shape == tuple(state[key].shape)
        weight = state[key].numpy()
        assert np.array_equal(codebook[assignments].view(np.int32), weight.view(np.int32))
        assert len(np.unique(weight)) <= 32
        assert np.array_equal(assignments == 0, weight == 0)
    assert {"ladder", "epoch", "round", "step"} <= {e.kind for e in events}
    assert all(e.done is not None and e.total for e in events)


def test_deterministic_under_the_seed(checkpoint_dir, digits):
    recipe = Recipe.from_dict({
        "name": "tiny",
        "steps": [
            {"type": "prune", "quality": 1.0, "rounds": 2,
             "retrain": {"epochs": 1, "max_train_samples": 256}},
            {"type": "share", "bits": 4, "codebook": "float16",
             "retrain": {"epochs": 1, "max_train_samples": 256}},
        ],
    })  # fmt: skip
    runs = []
    for _ in range(2):
        model, meta = load_checkpoint(checkpoint_dir)
        result = compress(model, recipe, digits, meta)
        runs.append(model.state_dict())
    assert all(torch.equal(bits_of(v), bits_of(runs[1][k])) for k, v in runs[0].items())
    assert result.fp16_codebooks == set(result.shared)
    for codebook, _ in result.shared.values():  # a float16 codebook stores losslessly
        assert np.array_equal(codebook.astype(np.float16).astype(np.float32), codebook)


# --- structured pruning ----------------------------------------------------------------------


def test_channel_groups_of_lenet5():
    net = zoo.build_model("lenet-5")
    groups, refused = channel_groups(net)
    assert groups["conv1"].consumers == [("conv2", 1)]
    assert groups["conv2"].consumers == [("fc1", 16)]  # 50 channels of 4x4 flattened
    assert groups["fc1"].consumers == [("fc2", 1)]
    assert "output" in refused["fc2"]  # the logits keep their classes


def test_removing_channels_equals_zeroing_them():
    torch.manual_seed(4)
    net = zoo.build_model("lenet-5").eval()
    x = torch.rand(8, 1, 28, 28)
    reference = copy.deepcopy(net)
    groups, _ = channel_groups(net)
    for name, kept in [("conv1", 10), ("conv2", 24), ("fc1", 100)]:
        module = dict(net.named_modules())[name]
        keep = channels_to_keep(channel_scores(module.weight), 1 - kept / module.weight.shape[0])
        assert len(keep) == kept
        remove_channels(net, groups[name], keep)
        gone = torch.ones(dict(reference.named_modules())[name].weight.shape[0], dtype=torch.bool)
        gone[keep] = False
        with torch.no_grad():  # a channel with zero weights and bias contributes exactly 0
            dict(reference.named_modules())[name].weight[gone] = 0
            dict(reference.named_modules())[name].bias[gone] = 0
    assert net.fc1.weight.shape == (100, 24 * 16) and net.conv2.weight.shape == (24, 10, 5, 5)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5)
    fresh = zoo.build_model("lenet-5")
    assert set(resize_to_state_dict(fresh, net.state_dict())) == {"conv1", "conv2", "fc1", "fc2"}
    fresh.load_state_dict(net.state_dict())  # strict: every shape fits now
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


def test_structured_step_shrinks_the_model(checkpoint_dir, digits):
    model, meta = load_checkpoint(checkpoint_dir)
    recipe = Recipe.from_dict({
        "name": "narrow",
        "steps": [
            {"type": "structured", "fraction": 0.5, "multiple": 4,
             "retrain": {"epochs": 1, "max_train_samples": 512}},
            {"type": "prune", "sparsity": {"fc1": 0.5}, "retrain": {"epochs": 0}},
        ],
    })  # fmt: skip
    result = compress(model, recipe, digits, meta)
    row = result.ladder[1]
    assert row["channels"] == {"fc1": {"kept": 152, "of": 300}, "fc2": {"kept": 52, "of": 100}}
    assert "fc3" in row["skipped"] and row["parameters"] < result.ladder[0]["parameters"] / 2
    assert row["accuracy"] > 0.5 and set(result.resized) == {"fc1", "fc2", "fc3"}
    assert model.net.fc3.weight.shape == (10, 52)
    with pytest.raises(InputError, match="put structured steps first"):
        plan_recipe(Recipe("late", [recipe.steps[1], recipe.steps[0]]), find_layers(model))


def test_prune_channels_thins_mobilenet_and_skips_what_cannot_shrink_alone():
    """MobileNet v2 thins, residual stages included (tests/services/test_structured_dag.py);
    what cannot shrink by itself (depthwise convs, the logits) is skipped, unless a recipe names
    it, which is refused with the reason."""
    torch.manual_seed(0)
    net = zoo.build_model("mobilenet-v2", input_size=64, classes=10).eval()
    convs = {x.name: 0.5 for x in find_layers(net).values() if x.kind == "conv"}
    before = sum(p.numel() for p in net.parameters())
    channels, skipped, changed = prune_channels(net, convs)
    assert channels and skipped and set(channels).isdisjoint(skipped)
    assert all(c["kept"] == (c["of"] + 1) // 2 for c in channels.values())
    assert set(channels) <= set(changed)
    assert sum(p.numel() for p in net.parameters()) < 0.8 * before
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 10)  # still a working network
    blocked = next(iter(skipped))
    with pytest.raises(InputError, match=repr(blocked)):
        prune_channels(net, {blocked: 0.5}, required={blocked})

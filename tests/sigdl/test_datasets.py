"""Tests for sigdl.core.datasets: the IDX sets, digits, image folders, resolution, download, adapt.

.venv/bin/pytest tests/sigdl/test_datasets.py -q
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigdl.core import datasets
from sigdl.core.datasets import DatasetError, adapt, list_datasets, load_dataset, parse_idx

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is missing")


# --- helpers -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8) encoded as IDX."""
    head = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> Path:
    """A tiny, valid four-file IDX set whose pixels encode the label (for checking order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.broadcast_to(labels[:, None, None] * 20, (n, 4, 5)).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real ~/.cache, /usr/share/datasets or $SIGDL_DATA; offline unless a test says not."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.delenv("SIGDL_DATA", raising=False)
    monkeypatch.setenv("SIGDL_OFFLINE", "1")
    monkeypatch.setenv("SIGDL_PROGRESS", "0")
    return tmp_path


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGDL_DATA", str(SHARED))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on loopback, and its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- the shared MNIST / Fashion-MNIST copies ------------------------------------------------------


@needs_shared
def test_mnist_from_sigdl_data(isolated: Path, shared_data: None) -> None:
    ds = load_dataset("mnist")
    assert ds.source == str(SHARED / "mnist")
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.dtype == torch.int64 and len(ds.test) == 10000
    assert ds.train.labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert ds.test.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert ds.classes == [str(d) for d in range(10)]
    assert (ds.channels, ds.size, ds.image_shape) == (1, 28, (1, 28, 28))
    assert ds.train.images.max() == 255 and ds.train.images.min() == 0


@needs_shared
def test_fashion_mnist_from_sigdl_data(isolated: Path, shared_data: None) -> None:
    ds = load_dataset("fashion_mnist")  # underscores and case are normalized
    assert ds.name == "fashion-mnist"
    assert ds.train.images.shape == (60000, 1, 28, 28)
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.labels.bincount().tolist() == [6000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@needs_shared
def test_loads_are_cached_but_callers_get_their_own_tensors(
    isolated: Path, shared_data: None
) -> None:
    first = load_dataset("mnist")
    first.train.images.zero_()
    second = load_dataset("mnist")
    assert second.train.images.max() == 255
    assert datasets._load_idx_cached.cache_info().hits >= 1


@needs_shared
def test_list_datasets_reports_where_each_was_found(isolated: Path, shared_data: None) -> None:
    rows = {row["name"]: row for row in list_datasets()}
    assert set(rows) == {"digits", "mnist", "fashion-mnist"}
    assert rows["mnist"]["found"] and rows["mnist"]["where"] == str(SHARED / "mnist")
    assert rows["mnist"]["train_size"] == 60000 and rows["mnist"]["test_size"] == 10000
    assert rows["fashion-mnist"]["image_shape"] == (1, 28, 28)
    assert rows["digits"]["found"] and rows["digits"]["train_size"] == 1437


def test_list_datasets_honours_data_dir(isolated: Path) -> None:
    write_idx_set(isolated / "mine" / "mnist", n_train=7, n_test=3)
    row = next(r for r in list_datasets(data_dir=isolated / "mine") if r["name"] == "mnist")
    assert row["where"] == str(isolated / "mine" / "mnist")
    assert (row["train_size"], row["test_size"], row["image_shape"]) == (7, 3, (1, 4, 5))


def test_list_datasets_when_nothing_is_local(isolated: Path) -> None:
    row = next(r for r in list_datasets() if r["name"] == "mnist")
    assert row["found"] is False and row["where"] is None
    assert row["searched"] == [
        str(isolated / "home" / ".cache" / "sigdl" / "datasets" / "mnist"),
        str(isolated / "system" / "mnist"),
    ]


# --- digits --------------------------------------------------------------------------------------


def test_digits_needs_nothing_and_splits_deterministically(isolated: Path) -> None:
    ds = load_dataset("digits")
    assert ds.train.images.shape == (1437, 1, 28, 28) and ds.test.images.shape == (360, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.max() == 255
    assert ds.classes == [str(d) for d in range(10)]
    # Stratified: every class holds 35..37 of the 360 test images.
    assert all(35 <= c <= 37 for c in ds.test.labels.bincount().tolist())
    again = load_dataset("digits")
    assert torch.equal(ds.test.images, again.test.images)
    assert torch.equal(ds.train.labels, again.train.labels)


def test_unknown_name_lists_what_is_registered() -> None:
    with pytest.raises(DatasetError, match=r"'cifar10'.*'digits'.*'mnist'.*imagefolder"):
        load_dataset("cifar10")


# --- resolution order ----------------------------------------------------------------------------


@needs_shared
def test_data_dir_beats_sigdl_data(isolated: Path, shared_data: None) -> None:
    mine = write_idx_set(isolated / "mine")
    ds = load_dataset("mnist", data_dir=mine)
    assert ds.source == str(mine) and len(ds.train) == 12 and len(ds.test) == 5
    assert ds.train.images.shape == (12, 1, 4, 5)
    assert torch.equal(ds.train.images[:, 0, 0, 0], ds.train.labels.to(torch.uint8) * 20)


def test_data_dir_may_hold_name_subfolder_and_uncompressed_files(isolated: Path) -> None:
    write_idx_set(isolated / "root" / "fashion-mnist", gz=False)
    ds = load_dataset("fashion-mnist", data_dir=isolated / "root")
    assert ds.source == str(isolated / "root" / "fashion-mnist") and len(ds.train) == 12


def test_sigdl_data_beats_cache_beats_system(isolated: Path, monkeypatch) -> None:
    system = write_idx_set(isolated / "system" / "mnist", n_train=3)
    assert load_dataset("mnist").source == str(system)
    cache = write_idx_set(isolated / "home" / ".cache" / "sigdl" / "datasets" / "mnist", n_train=4)
    assert load_dataset("mnist").source == str(cache)
    env = write_idx_set(isolated / "env" / "mnist", n_train=6)
    monkeypatch.setenv("SIGDL_DATA", str(isolated / "env"))
    ds = load_dataset("mnist")
    assert ds.source == str(env) and len(ds.train) == 6


def test_offline_and_missing_names_every_place(isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("SIGDL_DATA", str(isolated / "env"))
    partial = write_idx_set(isolated / "env" / "mnist")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four files is not a data set
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", data_dir=isolated / "given")
    message = str(err.value)
    assert "\n" not in message and "'mnist'" in message and "SIGDL_OFFLINE" in message
    for place in (
        isolated / "given",
        isolated / "given" / "mnist",
        isolated / "env" / "mnist",
        isolated / "home" / ".cache" / "sigdl" / "datasets" / "mnist",
        isolated / "system" / "mnist",
    ):
        assert str(place) in message


# --- download (from a loopback server) -----------------------------------------------------------


def _serve_idx_set(root: Path) -> dict[str, str]:
    """Write a tiny IDX set into the served folder; return each file's sha256."""
    write_idx_set(root)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("*.gz")}


def test_download_verifies_and_lands_in_cache(isolated: Path, http_root, monkeypatch) -> None:
    root, url = http_root
    sums = _serve_idx_set(root)
    monkeypatch.setenv("SIGDL_OFFLINE", "0")
    monkeypatch.setitem(datasets.DOWNLOAD_URLS, "mnist", [url + "missing/", url])  # 404 first
    monkeypatch.setitem(datasets.SHA256, "mnist", sums)
    ds = load_dataset("mnist")
    cache = isolated / "home" / ".cache" / "sigdl" / "datasets" / "mnist"
    assert ds.source == str(cache) and len(ds.train) == 12
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)  # no temporary files left
    for name, digest in sums.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest


def test_download_with_wrong_checksum_keeps_nothing(isolated: Path, http_root, monkeypatch) -> None:
    root, url = http_root
    sums = _serve_idx_set(root)
    sums["t10k-images-idx3-ubyte.gz"] = "0" * 64
    monkeypatch.setenv("SIGDL_OFFLINE", "0")
    monkeypatch.setitem(datasets.DOWNLOAD_URLS, "mnist", [url])
    monkeypatch.setitem(datasets.SHA256, "mnist", sums)
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz.*sha256.*expected 0{64}"):
        load_dataset("mnist")
    cache = isolated / "home" / ".cache" / "sigdl" / "datasets" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in cache.iterdir()}
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_failure_lists_places_and_urls(isolated: Path, http_root, monkeypatch) -> None:
    _, url = http_root  # serves nothing: every file is a 404
    monkeypatch.setenv("SIGDL_OFFLINE", "false")
    monkeypatch.setitem(datasets.DOWNLOAD_URLS, "fashion-mnist", [url])
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    assert "download failed" in message and url in message and "404" in message
    assert str(isolated / "system" / "fashion-mnist") in message and "\n" not in message


def test_download_gives_up_after_the_timeout(isolated: Path, monkeypatch) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        monkeypatch.setenv("SIGDL_OFFLINE", "0")
        monkeypatch.setenv("SIGDL_DOWNLOAD_TIMEOUT_S", "0.3")
        monkeypatch.setitem(datasets.DOWNLOAD_URLS, "mnist", [url])
        start = time.monotonic()
        with pytest.raises(DatasetError, match="timed out"):
            load_dataset("mnist")
        assert time.monotonic() - start < 5


# --- corrupt and truncated IDX files -------------------------------------------------------------


def _corrupt_set(folder: Path, filename: str, data: bytes) -> Path:
    write_idx_set(folder)
    (folder / filename).write_bytes(data)
    return folder


def test_truncated_gzip_names_the_file(isolated: Path) -> None:
    whole = gzip.compress(idx_bytes(np.zeros((12, 4, 5), np.uint8)))
    folder = _corrupt_set(isolated / "d", "train-images-idx3-ubyte.gz", whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz' is a truncated gzip"):
        load_dataset("mnist", data_dir=folder)


def test_corrupt_gzip_names_the_file(isolated: Path) -> None:
    data = bytearray(gzip.compress(idx_bytes(np.arange(60, dtype=np.uint8).reshape(12, 5))))
    data[-6] ^= 0xFF  # the CRC in the trailer no longer matches
    folder = _corrupt_set(isolated / "d", "train-labels-idx1-ubyte.gz", bytes(data))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz' is a corrupt gzip"):
        load_dataset("mnist", data_dir=folder)


@pytest.mark.parametrize(
    ("filename", "data", "complaint"),
    [
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((12, 4, 5), np.uint8))[:-7], "is truncated"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((12, 4, 5), np.uint8)) + b"x", "trailing"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((12, 20), np.uint8)), "magic 2050"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros((5, 1), np.uint8)), "expected 2049"),
        ("t10k-labels-idx1-ubyte", b"\x00\x00\x0d\x01" + bytes(9), "magic 3329"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)), "holds 4 labels"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.full(5, 10, np.uint8)), "label 10, expected"),
        ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 4, 5), np.uint8))[:10], "header"),
    ],
)
def test_bad_idx_contents_are_refused(isolated: Path, filename: str, data: bytes, complaint: str):
    folder = isolated / "d"
    write_idx_set(folder, gz=False)
    (folder / filename).write_bytes(data)
    with pytest.raises(DatasetError, match=complaint) as err:
        load_dataset("mnist", data_dir=folder)
    assert filename in str(err.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_any_truncation_raises_never_garbage(shape: tuple[int, int, int], cut: float) -> None:
    whole = idx_bytes(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    assert parse_idx(whole, 3).shape == shape
    with pytest.raises(DatasetError):
        parse_idx(whole[: int(len(whole) * cut)], 3)
    gz = gzip.compress(whole)
    with pytest.raises(DatasetError):
        parse_idx(datasets._read_bytes_from(gz[: int(len(gz) * cut)], "x.gz"), 3, "x.gz")


# --- image folders -------------------------------------------------------------------------------


def _write_images(folder: Path, per_class: int, size=(6, 6), mode="L", fmt="png") -> None:
    from PIL import Image

    for cls_index, cls in enumerate(["cat", "dog"]):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = 40 * cls_index + i if mode == "L" else (200, 10 * i, 40 * cls_index)
            Image.new(mode, size, color).save(folder / cls / f"{i:02d}.{fmt}")


def test_imagefolder_splits_80_20_and_keeps_gray(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    _write_images(tmp_path / "set", per_class=5)
    ds = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert ds.classes == ["cat", "dog"] and ds.source == str(tmp_path / "set")
    assert ds.train.images.shape == (8, 1, 6, 6) and ds.test.images.shape == (2, 1, 6, 6)
    assert ds.train.labels.bincount().tolist() == [4, 4]
    assert ds.test.labels.bincount().tolist() == [1, 1]
    # Pixels survive the trip: each image is filled with 40*class + its index.
    pixel = ds.train.images[:, 0, 0, 0].long()
    assert torch.equal(pixel // 40, ds.train.labels)
    again = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert torch.equal(ds.test.images, again.test.images)


def test_imagefolder_train_test_layout_rgb_and_mixed_sizes(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    _write_images(tmp_path / "set" / "train", per_class=3, mode="RGB", size=(8, 5))
    _write_images(tmp_path / "set" / "test", per_class=1, mode="RGB", size=(8, 5), fmt="ppm")
    Image.new("RGB", (16, 10), (255, 0, 0)).save(tmp_path / "set" / "train" / "dog" / "big.jpg")
    ds = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert ds.train.images.shape == (7, 3, 5, 8)  # most common size wins; (W, H) = (8, 5)
    assert ds.test.images.shape == (2, 3, 5, 8)
    assert ds.image_shape == (3, 5, 8)
    with pytest.raises(DatasetError, match="not square"):
        _ = ds.size


def test_imagefolder_reads_16_bit_pgm_scaled_not_clipped(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    for cls, value in (("low", 0), ("high", 65535), ("mid", 257 * 100)):
        (tmp_path / "set" / cls).mkdir(parents=True)
        pixels = np.full((3, 3), value, dtype=">u2").tobytes()
        (tmp_path / "set" / cls / "a.pgm").write_bytes(b"P5\n3 3\n65535\n" + pixels)
    ds = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert ds.classes == ["high", "low", "mid"] and ds.image_shape == (1, 3, 3)
    assert ds.train.images[:, 0, 0, 0].tolist() == [255, 0, 100]  # one image per class: all train


def test_imagefolder_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    _write_images(tmp_path / "bad", per_class=2)
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.png"):
        load_dataset(f"imagefolder:{tmp_path / 'bad'}")


# --- adapt ---------------------------------------------------------------------------------------


def test_adapt_scales_uint8_and_repeats_gray() -> None:
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    same = adapt(images, channels=1, size=28)
    assert same.dtype == torch.float32 and torch.allclose(same, images.float() / 255)
    rgb = adapt(images, channels=3, size=28)
    assert rgb.shape == (2, 3, 28, 28) and torch.equal(rgb[:, 0], rgb[:, 2])
    gray = adapt(torch.rand(2, 3, 8, 8), channels=1, size=8)
    assert gray.shape == (2, 1, 8, 8)


def test_adapt_resize_keeps_range_and_constants() -> None:
    flat = torch.full((3, 1, 28, 28), 128, dtype=torch.uint8)
    out = adapt(flat, channels=3, size=224)
    assert out.shape == (3, 3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 128 / 255))
    noisy = adapt(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8), 1, 13)
    assert noisy.shape == (2, 1, 13, 13) and noisy.min() >= 0 and noisy.max() <= 1


def test_adapt_pad_centers_and_crop_centers() -> None:
    ones = torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)
    padded = adapt(ones, channels=1, size=32, mode="pad")
    assert padded.shape == (1, 1, 32, 32)
    assert padded[0, 0, 2:30, 2:30].eq(1).all() and padded.sum() == 28 * 28
    ramp = torch.arange(28, dtype=torch.uint8).repeat(1, 1, 28, 1)  # column index as pixel
    cropped = adapt(ramp, channels=1, size=24, mode="pad")
    assert cropped.shape == (1, 1, 24, 24)
    assert torch.allclose(cropped[0, 0, 0], torch.arange(2, 26).float() / 255)


def test_adapt_refuses_bad_arguments() -> None:
    images = torch.zeros(1, 2, 8, 8)
    with pytest.raises(DatasetError, match="2 channels to 3"):
        adapt(images, channels=3, size=8)
    with pytest.raises(DatasetError, match="'stretch'"):
        adapt(images, channels=2, size=8, mode="stretch")
    with pytest.raises(DatasetError, match=r"\(N, C, H, W\)"):
        adapt(torch.zeros(8, 8), channels=1, size=8)

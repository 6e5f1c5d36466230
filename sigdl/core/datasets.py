"""Data sets as in-memory tensors: MNIST, Fashion-MNIST, scikit-learn's digits, image folders.

    from sigdl.core.datasets import load_dataset, adapt
    ds = load_dataset("mnist")                     # ds.train.images: (60000, 1, 28, 28) uint8
    x = adapt(ds.test.images[:64], channels=3, size=224)   # (64, 3, 224, 224) float32 in [0, 1]

IDX sets are resolved in this order (ARCHITECTURE.md): the ``data_dir`` argument (the folder with
the four files, or a folder holding ``<name>/``), ``$SIGDL_DATA/<name>/``,
``~/.cache/sigdl/datasets/<name>/``, ``/usr/share/datasets/<name>/``, then a download from the set's
canonical home into the cache, each file checked against its published sha256. ``digits`` needs
nothing; ``imagefolder:PATH`` reads one subfolder per class (optionally under ``train/``/``test/``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sigdl.core.errors import InputError, short
from sigdl.core.settings import SIGDL_DATA, SIGDL_DOWNLOAD_TIMEOUT_S, SIGDL_OFFLINE, SIGDL_PROGRESS


class DatasetError(InputError):
    """A data set that cannot be found, downloaded or parsed; the message is one line."""


@dataclass
class Split:
    """One split of a data set, held in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8 pixels
    labels: torch.Tensor  # (N,) int64 class indices

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """A data set with both splits in memory and the place it was read from."""

    name: str  # as passed to load_dataset, e.g. "mnist" or "imagefolder:/data/parts"
    classes: list[str]  # class names, indexed by label
    train: Split
    test: Split
    source: str  # the folder the files came from, or the library that generated them

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.train.images.shape
        return (int(c), int(h), int(w))

    @property
    def size(self) -> int:
        """Side of the square images; a non-square image folder must go through adapt()."""
        _, h, w = self.image_shape
        if h != w:
            raise DatasetError(
                f"data set {self.name!r} has {h}x{w} images, not square; use adapt() to resize"
            )
        return h


# --- the IDX sets: where they live and what their published files hash to ------------------------

IDX_FILES = {  # role -> file name as published (the .gz is optional on disk)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Tried in order; the sha256 check makes a mirror as good as the original. Tests point these at
# a server on loopback.
DOWNLOAD_URLS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror: LeCun's site 403s
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

# sha256 of the canonical published .gz files (the same bytes torchvision's md5s identify).
# Applied to downloads only: local copies (Debian's recompressed ones, ours rebuilt from PNGs)
# differ byte-wise and are trusted, the IDX parser still validates their structure.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        ),
    },
}

# Debian's dataset packages install here; a module constant so tests can move it.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

_MAX_DOWNLOAD_BYTES = 256 * 2**20  # far above any file here; stops a rogue server filling the disk


@dataclass(frozen=True)
class _IdxSpec:
    description: str
    classes: tuple[str, ...]
    train_size: int  # as published, shown by list_datasets before the files are found
    test_size: int


_IDX_SETS: dict[str, _IdxSpec] = {
    "mnist": _IdxSpec(
        "MNIST handwritten digits, 28x28 gray (LeCun, Cortes, Burges)",
        tuple(str(d) for d in range(10)),
        60000,
        10000,
    ),
    "fashion-mnist": _IdxSpec(
        "Fashion-MNIST Zalando article images, 28x28 gray",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        60000,
        10000,
    ),
}

_DIGITS_DESCRIPTION = "scikit-learn's bundled 8x8 digits upsampled to 28x28; needs no files"
_DIGITS_SOURCE = "sklearn.datasets.load_digits"
_IMAGEFOLDER = "imagefolder:"


# --- IDX parsing ---------------------------------------------------------------------------------

_IDX_UBYTE = 0x08
MAX_IDX_BYTES = 1 << 30  # one IDX payload (MNIST's training images: 47 MB)
MAX_IDX_SIDE = 4096  # an image's height or width


def _read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array from `path`, gzip or not. The header is read and bounded first, then
    exactly the payload it promises (+1 byte, to see trailing data): a lying header or a gzip
    bomb is refused without inflating more than the bound."""
    where = str(path)
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gz else raw
            head = stream.read(4 + 4 * ndim)
            try:
                dims = parse_idx_header(head, ndim, where)
            except DatasetError:
                if gz:  # a corrupt gzip says so first; draining is bounded, the bomb refused
                    while stream.read(1 << 20) and stream.tell() < 64 << 20:
                        pass
                raise
            body = stream.read(math.prod(dims) + 1)  # at EOF, GzipFile checks CRC and length
    except EOFError:
        raise DatasetError(f"{where!r} is a truncated gzip file") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{where!r} is a corrupt gzip file: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"{where!r} cannot be read: {exc.strerror}") from None
    return parse_idx(head + body, ndim, where)


def _read_bytes_from(raw: bytes, where: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw  # not gzip: parse_idx checks the structure
    try:
        return gzip.decompress(raw)  # also checks the CRC and length in the gzip trailer
    except EOFError:
        raise DatasetError(f"{where!r} is a truncated gzip file") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{where!r} is a corrupt gzip file: {exc}") from None


def parse_idx_header(head: bytes, ndim: int, where: str = "<bytes>") -> tuple[int, ...]:
    """The dimensions in an IDX header (its first 4 + 4*ndim bytes). Raises DatasetError."""
    if len(head) < 4:
        raise DatasetError(f"{where!r} is {len(head)} bytes, too short for an IDX header")
    if head[:4] != struct.pack(">HBB", 0, _IDX_UBYTE, ndim):
        magic = struct.unpack(">I", head[:4])[0]
        want = (_IDX_UBYTE << 8) | ndim
        raise DatasetError(f"{where!r} has IDX magic {magic}, expected {want} (uint8, {ndim}-d)")
    if len(head) < 4 + 4 * ndim:
        raise DatasetError(f"{where!r} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    if 0 in dims:
        raise DatasetError(f"{where!r} has an empty dimension in {dims}")
    if math.prod(dims) > MAX_IDX_BYTES or any(d > MAX_IDX_SIDE for d in dims[1:]):
        raise DatasetError(
            f"{where!r} has IDX dimensions {dims}: over {MAX_IDX_BYTES} bytes or a side over "
            f"{MAX_IDX_SIDE}"
        )
    return dims


def parse_idx(data: bytes, ndim: int, where: str = "<bytes>") -> np.ndarray:
    """A uint8 IDX array with `ndim` dimensions, checked against its header. Raises DatasetError."""
    dims = parse_idx_header(data, ndim, where)
    header = 4 + 4 * ndim
    expected = math.prod(dims)  # exact: int64 could wrap round to the payload's length
    payload = len(data) - header
    if payload != expected:
        what = "is truncated" if payload < expected else "has trailing bytes"
        raise DatasetError(
            f"{where!r} {what}: payload is {payload} bytes, header {dims} promises {expected}"
        )
    # One copy so the tensor owns writable memory; no Python loop touches the pixels.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_idx_split(images: Path, labels: Path, num_classes: int) -> Split:
    x = _read_idx_file(images, 3)  # (N, H, W)
    y = _read_idx_file(labels, 1)  # (N,)
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{str(images)!r} holds {x.shape[0]} images but {str(labels)!r} holds "
            f"{y.shape[0]} labels; expected equal counts"
        )
    if int(y.max()) >= num_classes:
        raise DatasetError(
            f"{str(labels)!r} holds label {int(y.max())}, expected 0..{num_classes - 1}"
        )
    return Split(
        images=torch.from_numpy(x).unsqueeze(1),  # (N, 1, H, W)
        labels=torch.from_numpy(y.astype(np.int64)),
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    """The file for `stem` in `folder`: gzip first, then uncompressed, then Kaggle's dotted name."""
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_files(folder: Path) -> dict[str, Path] | None:
    found = {role: _idx_file(folder, stem) for role, stem in IDX_FILES.items()}
    if any(path is None for path in found.values()):
        return None
    return found  # type: ignore[return-value]


def _signature(files: dict[str, Path]) -> tuple:
    """What makes a cached parse stale: a file replaced (size or mtime changed)."""
    stats = {role: path.stat() for role, path in files.items()}
    return tuple(sorted((r, str(files[r]), s.st_size, s.st_mtime_ns) for r, s in stats.items()))


@functools.lru_cache(maxsize=4)
def _load_idx_cached(name: str, folder: str, signature: tuple) -> tuple[Split, Split]:
    files = {role: Path(path) for role, path, _, _ in signature}
    n = len(_IDX_SETS[name].classes)
    train = _read_idx_split(files["train_images"], files["train_labels"], n)
    test = _read_idx_split(files["test_images"], files["test_labels"], n)
    return train, test


# --- resolution and download ---------------------------------------------------------------------


def cache_dir(name: str) -> Path:
    """Where downloads of data set `name` go."""
    return Path.home() / ".cache" / "sigdl" / "datasets" / name


def _candidates(name: str, data_dir: str | Path | None) -> list[Path]:
    """Every folder that may hold data set `name`, in the documented search order."""
    places: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        places += [root, root / name]
    data_root = SIGDL_DATA.get()
    if data_root is not None:
        places.append(Path(data_root) / name)
    places += [cache_dir(name), SYSTEM_DATA_DIR / name]
    return places


def _find_local(name: str, data_dir: str | Path | None) -> tuple[Path | None, list[Path]]:
    """The first folder holding all four files, and every folder looked at."""
    places = _candidates(name, data_dir)
    for place in places:
        if _idx_files(place) is not None:
            return place, places
    return None, places


def _download_file(url: str, target: Path, sha256: str) -> None:
    """Fetch `url` to a temporary name beside `target`, verify, then rename: never half a file."""
    timeout = SIGDL_DOWNLOAD_TIMEOUT_S.get()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            got = _copy_stream(resp, out, url)
        if got != sha256:
            raise DatasetError(f"{url!r} has sha256 {got}, expected {sha256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_stream(resp: http.client.HTTPResponse, out: BinaryIO, url: str) -> str:
    """Copy the response body to `out` with a progress bar; return its sha256."""
    digest = hashlib.sha256()
    total = int(resp.headers.get("Content-Length") or 0) or None
    show = bool(SIGDL_PROGRESS.get()) and sys.stderr.isatty()
    name = url.rsplit("/", 1)[-1]
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not show) as bar:
        size = 0
        while chunk := resp.read(1 << 20):
            size += len(chunk)
            if size > _MAX_DOWNLOAD_BYTES:
                raise DatasetError(f"{url!r} is larger than {_MAX_DOWNLOAD_BYTES} bytes")
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _download(name: str) -> Path:
    """Download the four files of `name` into its cache folder, trying each mirror in turn."""
    folder = cache_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES.values():
        if _idx_file(folder, stem) is not None:
            continue  # an earlier, interrupted download already verified and renamed this one
        filename = f"{stem}.gz"
        errors = []
        for base in DOWNLOAD_URLS[name]:
            url = base.rstrip("/") + "/" + filename
            try:
                _download_file(url, folder / filename, SHA256[name][filename])
                break
            except DatasetError as exc:  # a checksum or size refusal names the URL already
                errors.append(str(exc))
            except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts
                errors.append(f"{url!r}: {exc}")
        else:
            raise DatasetError("; ".join(errors))
    return folder


def _searched_text(places: list[Path]) -> str:
    return ", ".join(str(p) for p in places)


def _resolve_idx(name: str, data_dir: str | Path | None) -> Path:
    """The folder holding data set `name`, downloading it when it is nowhere local."""
    folder, places = _find_local(name, data_dir)
    if folder is not None:
        return folder
    where = f"data set {name!r} not found; looked in {_searched_text(places)}"
    if SIGDL_OFFLINE.get():
        raise DatasetError(f"{where}; not downloading because SIGDL_OFFLINE is set")
    try:
        return _download(name)
    except (DatasetError, OSError) as exc:  # OSError: the cache folder cannot be written
        raise DatasetError(f"{where}; download failed: {exc}") from None


def _load_idx(name: str, data_dir: str | Path | None) -> Dataset:
    folder = _resolve_idx(name, data_dir)
    files = _idx_files(folder)
    assert files is not None  # _resolve_idx only returns complete folders
    train, test = _load_idx_cached(name, str(folder), _signature(files))
    # Clones keep the cached parse intact whatever the caller does to its tensors.
    return Dataset(
        name=name,
        classes=list(_IDX_SETS[name].classes),
        train=Split(train.images.clone(), train.labels.clone()),
        test=Split(test.images.clone(), test.labels.clone()),
        source=str(folder),
    )


# --- digits --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_digits_cached() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)  # (N, 1, 8, 8)
    up = F.interpolate(pixels, size=(28, 28), mode="bilinear", align_corners=False)
    images = up.round().clamp(0, 255).to(torch.uint8)  # (N, 1, 28, 28)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # Stratified and seeded, so every process and every run sees the same 1437/360 split.
    index = np.arange(len(labels))
    train_ix, test_ix = train_test_split(
        index, test_size=0.2, stratify=bunch.target, random_state=0
    )
    train_ix, test_ix = torch.from_numpy(train_ix), torch.from_numpy(test_ix)
    return Split(images[train_ix], labels[train_ix]), Split(images[test_ix], labels[test_ix])


def _load_digits() -> Dataset:
    train, test = _load_digits_cached()
    return Dataset(
        name="digits",
        classes=[str(d) for d in range(10)],
        train=Split(train.images.clone(), train.labels.clone()),
        test=Split(test.images.clone(), test.labels.clone()),
        source=_DIGITS_SOURCE,
    )


# --- image folders -------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp"}


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for a folder with one subfolder per class."""
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            classes[sub.name] = files
    if not classes:
        raise DatasetError(
            f"image folder {str(root)!r} has no class subfolders holding images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return classes


def _split_files(
    by_class: dict[str, list[Path]], test_fraction: float = 0.2
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """A seeded per-class split: the same files land in test on every run and machine."""
    train, test = [], []
    for cls, files in by_class.items():
        order = np.random.default_rng(0).permutation(len(files))
        n_test = round(len(files) * test_fraction) if len(files) > 1 else 0
        test += [(files[i], cls) for i in sorted(order[:n_test])]
        train += [(files[i], cls) for i in sorted(order[n_test:])]
    return train, test


def _open_image(path: Path) -> np.ndarray:
    """Decoded pixels as (H, W, 3) uint8; gray images come back with three equal channels."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DatasetError(
            f"reading {str(path)!r} needs Pillow (pip install pillow), which is not installed"
        ) from None
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I"):  # 16-bit gray (Pillow scales PGM maxval to 65535)
                wide = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255, not a clip
                gray = wide.round().clip(0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.array(img.convert("RGB"), dtype=np.uint8)  # writable, for torch
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {str(path)!r}: {exc}") from None


def _resize_rgb(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _decode_all(items: list[tuple[Path, str]]) -> tuple[list[np.ndarray], tuple[int, int], bool]:
    """Decoded images, the most common (H, W) and whether every image is gray."""
    pixels = [_open_image(path) for path, _ in items]
    size = Counter(p.shape[:2] for p in pixels).most_common(1)[0][0]
    gray = all(
        np.array_equal(p[:, :, 0], p[:, :, 1]) and np.array_equal(p[:, :, 0], p[:, :, 2])
        for p in pixels
    )
    return pixels, size, gray


def _stack_split(
    pixels: list[np.ndarray], labels: list[int], size: tuple[int, int], gray: bool
) -> Split:
    if not pixels:
        empty = torch.zeros((0, 1 if gray else 3, *size), dtype=torch.uint8)
        return Split(empty, torch.zeros((0,), dtype=torch.int64))
    batch = np.stack([_resize_rgb(p, *size) for p in pixels])  # (N, H, W, 3)
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    if gray:
        images = images[:, :1].contiguous()
    return Split(images, torch.tensor(labels, dtype=torch.int64))


@functools.lru_cache(maxsize=2)
def _load_imagefolder_cached(root: str, listing: tuple) -> tuple[list[str], Split, Split]:
    folder = Path(root)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train_by, test_by = _class_folders(folder / "train"), _class_folders(folder / "test")
        extra = sorted(set(test_by) - set(train_by))
        if extra:
            raise DatasetError(f"{root!r}: test classes {extra} have no train folder")
        train_items = [(f, c) for c, fs in train_by.items() for f in fs]
        test_items = [(f, c) for c, fs in test_by.items() for f in fs]
        classes = list(train_by)
    else:
        by_class = _class_folders(folder)
        train_items, test_items = _split_files(by_class)
        classes = list(by_class)
    pixels, size, gray = _decode_all(train_items + test_items)
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[c] for _, c in train_items + test_items]
    n = len(train_items)
    train = _stack_split(pixels[:n], labels[:n], size, gray)
    return classes, train, _stack_split(pixels[n:], labels[n:], size, gray)


def _load_imagefolder(spec: str) -> Dataset:
    root = Path(spec[len(_IMAGEFOLDER) :]).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"image folder {str(root)!r} does not exist or is not a folder")
    listing = tuple(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    )
    classes, train, test = _load_imagefolder_cached(str(root), listing)
    return Dataset(
        name=spec,
        classes=list(classes),
        train=Split(train.images.clone(), train.labels.clone()),
        test=Split(test.images.clone(), test.labels.clone()),
        source=str(root),
    )


# --- the public entry points ---------------------------------------------------------------------


def _normalize(name: str) -> str:
    if name.startswith(_IMAGEFOLDER):
        return name
    return name.strip().lower().replace("_", "-")


def dataset_names() -> list[str]:
    """The registered names, plus the imagefolder scheme."""
    return ["digits", *_IDX_SETS, f"{_IMAGEFOLDER}PATH"]


def check_name(name: str) -> Path | None:
    """Check a data-set name without loading anything: the folder an `imagefolder:PATH` name
    reads (resolved), None for a registered name; DatasetError for any other name."""
    key = _normalize(str(name))
    if key.startswith(_IMAGEFOLDER):
        try:
            return Path(key[len(_IMAGEFOLDER) :]).expanduser().resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
            raise DatasetError(f"image folder {short(key)} is not a usable path: {exc}") from None
    if key == "digits" or key in _IDX_SETS:
        return None
    raise DatasetError(f"unknown data set {short(name)}; expected one of {dataset_names()}")


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Both splits of data set `name` in memory; see the module docstring for where it looks."""
    key = _normalize(name)
    if key.startswith(_IMAGEFOLDER):
        return _load_imagefolder(key)
    if key == "digits":
        return _load_digits()
    if key in _IDX_SETS:
        return _load_idx(key, data_dir)
    raise DatasetError(f"unknown data set {short(name)}; expected one of {dataset_names()}")


def _idx_sizes(files: dict[str, Path]) -> tuple[int, int, tuple[int, int, int]]:
    """Train/test counts and image shape from the IDX headers alone (no full decompress)."""

    def header(path: Path, ndim: int) -> tuple[int, ...]:
        with path.open("rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as fh:
            head = fh.read(4 + 4 * ndim)
        return parse_idx_header(head, ndim, str(path))

    n_train, h, w = header(files["train_images"], 3)
    n_test = header(files["test_images"], 3)[0]
    return n_train, n_test, (1, h, w)


def _describe_idx(name: str, data_dir: str | Path | None) -> dict:
    spec = _IDX_SETS[name]
    folder, places = _find_local(name, data_dir)
    row = {
        "name": name,
        "description": spec.description,
        "found": folder is not None,
        "where": str(folder) if folder is not None else None,
        "searched": [str(p) for p in places],
        "download": DOWNLOAD_URLS[name][0],
        "train_size": spec.train_size,
        "test_size": spec.test_size,
        "image_shape": (1, 28, 28),
        "classes": list(spec.classes),
    }
    if folder is not None:
        try:  # the files found may be a different cut than the published one
            row["train_size"], row["test_size"], row["image_shape"] = _idx_sizes(
                _idx_files(folder)  # type: ignore[arg-type]
            )
        except (DatasetError, OSError, EOFError) as exc:
            row["error"] = str(exc)
    return row


def list_datasets(data_dir: str | Path | None = None) -> list[dict]:
    """One row per registered data set, for `sigdl data list`; looks locally, never downloads.

    Rows hold name, description, found, where, searched, download (first URL or None),
    train_size, test_size, image_shape (C, H, W) and classes; ``error`` when a found file's
    header is unreadable. ``imagefolder:PATH`` is a scheme, not a row.
    """
    digits = {
        "name": "digits",
        "description": _DIGITS_DESCRIPTION,
        "found": True,
        "where": _DIGITS_SOURCE,
        "searched": [],
        "download": None,
        "train_size": 1437,
        "test_size": 360,
        "image_shape": (1, 28, 28),
        "classes": [str(d) for d in range(10)],
    }
    return [digits, *(_describe_idx(name, data_dir) for name in _IDX_SETS)]


# --- per-batch adaptation to a model's input -----------------------------------------------------


def _fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1:
        return x.expand(-1, channels, -1, -1)  # gray to RGB: the same value in every channel
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise DatasetError(f"cannot adapt {have} channels to {channels}; expected 1 <-> N or equal")


def _pad_or_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (centered) each side that is too small; center-crop each that is too large."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    if h > size:
        x = x[:, :, top : top + size, :]
    if w > size:
        x = x[:, :, :, left : left + size]
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return x


def adapt(images: torch.Tensor, channels: int, size: int, mode: str = "resize") -> torch.Tensor:
    """A batch as float32 in [0, 1], (N, channels, size, size), ready for a model's input.

    uint8 pixels are divided by 255; float input is taken to be in [0, 1] already. One channel is
    repeated to make three, three are averaged to make one. `mode` "resize" is bilinear
    (align_corners=False); "pad" zero-pads centered, or center-crops a larger image. A float32
    batch that already fits comes back as the same tensor, not a copy.
    """
    if images.ndim != 4:
        raise DatasetError(f"adapt expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    if mode not in ("resize", "pad"):
        raise DatasetError(f"unknown adapt mode {mode!r}; expected 'resize' or 'pad'")
    if size < 1 or channels < 1:
        raise DatasetError(f"adapt needs positive channels and size, got {channels}, {size}")
    # float input is trusted to be in [0, 1] already: rescaling it here would hide a double /255.
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.to(torch.float32)
    x = _fit_channels(x, channels)
    if tuple(x.shape[-2:]) != (size, size):
        if mode == "resize":
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        else:
            x = _pad_or_crop(x, size)
    return x.contiguous()

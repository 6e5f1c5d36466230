"""A sample set: labelled samples that edge agents collected, named for training by one JSON file.

The retraining trigger (pipelines/trigger.py) writes one beside the samples, in the edge site's
store, and the training stage reads it (TrainConfig.extra_samples) to add them to the training
split. The file names each sample by key and sha256; reading it fetches every sample, checks its
bytes against that digest and its pixels and label against the model, so a sample that changed
after the set was made is refused rather than learnt from.

    {"format": "sigdl-sample-set", "format_version": 1, "fleet": "lab", "target": "...",
     "prefix": "s3://edge-site/lab", "samples": [{"key": "samples/lab/<target>/<sha>.npy",
     "sha256": "<sha>", "label": 7, "private": true}, ...]}

A sample is what services/edge/samples.py keeps: float32 (1, C, H, W) pixels in [0, 1], saved by
numpy.save and loaded with allow_pickle=False (loading never runs code).

    chosen = load_sample_set("s3://edge-site/lab/retrain/.../samples.json", 10, (1, 28, 28))
    chosen.images.shape   # (N, 1, 28, 28)
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass

import numpy as np
import torch

from sigdl.core import store
from sigdl.core.errors import InputError, short

FORMAT = "sigdl-sample-set"
FORMAT_VERSION = 1
MAX_SAMPLES = 1_000_000
MAX_SET_BYTES = 256 << 20  # the JSON file itself
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_RE = re.compile(r"^samples/[a-z0-9-]+/[a-z0-9-]+/[0-9a-f]{64}\.npy$")


@dataclass(frozen=True)
class SampleSet:
    """The samples of one set, checked, as training data."""

    uri: str
    sha256: str  # of the set's JSON file: what a report records
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    private: int  # how many of them are private to the edge site

    def record(self) -> dict:
        """What a training report says it learnt from."""
        return {"uri": self.uri, "sha256": self.sha256, "count": int(self.labels.shape[0]),
                "private": self.private}  # fmt: skip


def make_set(fleet: str, target: str, prefix: str, samples: list[dict]) -> bytes:
    """The JSON of a set of `samples` ({key, sha256, label, private}) under `prefix`."""
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "fleet": fleet, "target": target,
           "prefix": prefix.rstrip("/"), "samples": samples}  # fmt: skip
    check_doc(doc, "sample set")
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def check_doc(doc: object, where: str) -> dict:
    """The set's fields, each named with what was expected when wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{where}: not a {FORMAT} file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{where}: format_version {short(doc.get('format_version'))}: "
                         f"expected {FORMAT_VERSION}")  # fmt: skip
    if not isinstance(doc.get("prefix"), str) or not doc["prefix"]:
        raise InputError(f"{where}: prefix {short(doc.get('prefix'))}: expected a store URI")
    samples = doc.get("samples")
    if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_SAMPLES:
        raise InputError(f"{where}: samples: expected a list of 1..{MAX_SAMPLES} entries")
    for i, entry in enumerate(samples):
        ok = (isinstance(entry, dict) and isinstance(entry.get("key"), str)
              and KEY_RE.match(entry["key"]) is not None
              and isinstance(entry.get("sha256"), str) and SHA_RE.match(entry["sha256"])
              and entry["key"].endswith(f"/{entry['sha256']}.npy")
              and isinstance(entry.get("label"), int) and not isinstance(entry["label"], bool)
              and isinstance(entry.get("private"), bool))  # fmt: skip
        if not ok:
            raise InputError(
                f"{where}: samples[{i}] {short(entry)}: expected {{key: samples/<fleet>/"
                "<target>/<sha256>.npy, sha256, label: int, private: bool}"
            )
    return doc


def load_sample_set(uri: str, classes: int, shape: tuple[int, int, int]) -> SampleSet:
    """Fetch and check every sample of the set at `uri` for a model of `classes` classes whose
    input is `shape` (C, H, W); InputError naming the first sample that is wrong."""
    raw = store.get_bytes(uri)
    if len(raw) > MAX_SET_BYTES:
        raise InputError(f"sample set {uri}: {len(raw)} bytes, expected at most {MAX_SET_BYTES}")
    try:
        doc = check_doc(json.loads(raw), f"sample set {uri}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"sample set {uri}: not JSON ({exc})") from None
    images = np.empty((len(doc["samples"]), *shape), np.float32)
    labels, private = [], 0
    for i, entry in enumerate(doc["samples"]):
        where = f"sample set {uri}: {entry['key']}"
        data = store.get_bytes(f"{doc['prefix']}/{entry['key']}")
        got = hashlib.sha256(data).hexdigest()
        if got != entry["sha256"]:
            raise InputError(f"{where}: sha256 {got[:16]}..., expected {entry['sha256'][:16]}... "
                             "(the sample changed after the set was made)")  # fmt: skip
        try:
            pixels = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{where}: not a NumPy array ({exc})") from None
        if pixels.dtype != np.float32 or pixels.shape != (1, *shape):
            raise InputError(f"{where}: {pixels.dtype} {pixels.shape}, expected float32 "
                             f"{(1, *shape)} (the model's input)")  # fmt: skip
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise InputError(f"{where}: pixels outside [0, 1]")
        if not 0 <= entry["label"] < classes:
            raise InputError(f"{where}: label {entry['label']}, expected 0..{classes - 1}")
        images[i] = pixels[0]
        labels.append(entry["label"])
        private += entry["private"]
    return SampleSet(uri, hashlib.sha256(raw).hexdigest(), torch.from_numpy(images),
                     torch.tensor(labels, dtype=torch.int64), private)  # fmt: skip

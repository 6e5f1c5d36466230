"""ONNX export of SigDL models and their evaluation with ONNX Runtime.

The deployable-model contract (ARCHITECTURE.md): one input `pixels`, float32 NCHW in [0, 1]
(pixel / 255) with a dynamic batch; any normalization inside the graph; one output `logits`.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from sigdl.core import atomic
from sigdl.core.errors import InputError, one_line

OPSET = 17
INPUT = "pixels"
OUTPUT = "logits"


@torch.no_grad()
def to_onnx_bytes(model: nn.Module, input_shape: list[int], metadata: dict | None = None) -> bytes:
    """Export `model` (taking pixels in [0, 1]) to an ONNX model, returned as bytes."""
    was_training = model.training
    model.eval()
    dummy = torch.rand(*input_shape)  # (1, C, H, W)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which takes ~30x longer
        # on these models and gives the same graph for them.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}},
        )
    model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: list[int], metadata: dict | None = None
) -> Path:
    """Export `model` to `path` atomically."""
    atomic.write_bytes(path, to_onnx_bytes(model, input_shape, metadata))
    return Path(path)


def _options(threads: int | None, profile_prefix: str | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if profile_prefix:  # ONNX Runtime's per-node trace, written by end_profiling()
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.log_severity_level = 3
    return opts


def session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; `threads` pins intra-op threads (None: ORT's default)."""
    if not Path(path).is_file():
        raise InputError(f"ONNX model {str(path)!r} does not exist")
    try:
        return ort.InferenceSession(
            str(path), _options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own untyped errors for malformed models
        reason = _ort_reason(exc)
        raise InputError(f"{str(path)!r} is not a loadable ONNX model: {reason}") from None


def session_from_bytes(
    model: bytes, threads: int | None = None, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """Like `session`, for a model held in memory; `profile_prefix` turns on ONNX Runtime's
    per-node profiling (a JSON trace written there by `end_profiling()`)."""
    opts = _options(threads, profile_prefix)
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for malformed models
        raise InputError(
            f"not a loadable ONNX model (ONNX Runtime: {_ort_reason(exc)}); "
            "expected a model ONNX Runtime's CPU provider loads"
        ) from None


def _ort_reason(exc: Exception) -> str:
    """ONNX Runtime's reason without its status prefix and C++ source location, cut short."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc) or type(exc).__name__)
    if text.startswith("/"):  # "/onnxruntime_src/...h:46 void f(...) the reason"
        text = text.split(") ", 1)[-1]
    return one_line(text, 240)


def input_shape(sess: ort.InferenceSession) -> tuple[int, int, int]:
    """(C, H, W) of the session's input; the batch axis is dynamic."""
    shape = sess.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise InputError(f"ONNX input {shape}: expected NCHW with fixed C, H, W")
    return shape[1], shape[2], shape[3]


def predict(sess: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """Logits for a float32 (N, C, H, W) batch of pixels in [0, 1]."""
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

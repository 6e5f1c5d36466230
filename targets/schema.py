"""The JSON Schema every `targets/<name>.yaml` profile is validated against.

A profile describes one embedded device from its data sheet: compute, memory, precisions,
operators and their constraints, a latency model, a power model and how it is emulated.
Units are in the field names (`_ghz`, `_gops`, `_gbs` = GB/s, `_mb` = MiB, `_kb` = KiB,
`_us`, `_w`, `_pj`). One multiply-accumulate counts as 2 operations in every `_gops` figure.

    python -m targets.schema     # prints the schema as JSON
"""

from __future__ import annotations

import json

PRECISIONS = ["fp32", "fp16", "int8"]
# Operator classes the latency model knows; every ONNX op type maps to one of them.
# pointwise: a 1x1 conv; conv_stem: a conv reading <= 4 channels (an RGB / gray input);
# dft: ONNX's DFT (the fft-conv step's frequency-domain convolutions)
OP_CLASSES = [
    "conv", "pointwise", "conv_stem", "depthwise", "gemm", "pool", "elementwise", "data",
    "reorder", "dft",
]  # fmt: skip

REQUIRED = [
    "name",
    "description",
    "kind",
    "emulation",
    "compute",
    "memory",
    "precisions",
    "native_precision",
    "latency_model",
    "power",
    "operators",
]
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_NON_NEGATIVE = {"type": "number", "minimum": 0}
_PER_PRECISION = {
    "type": "object",
    "propertyNames": {"enum": PRECISIONS},
    "additionalProperties": _POSITIVE,
    "minProperties": 1,
}
_PER_CLASS = {
    "type": "object",
    "propertyNames": {"enum": OP_CLASSES},
    "additionalProperties": _NON_NEGATIVE,
}
# a kernel+stride combination such as "3x3s2"
_KERNEL_STRIDE = {"type": "string", "pattern": r"^[0-9]+x[0-9]+s[0-9]+$"}

_CONSTRAINTS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "allowed": {"type": "array", "items": _KERNEL_STRIDE},  # conv/pool kernel+stride
        "depthwise_allowed": {"type": "array", "items": _KERNEL_STRIDE},
        "max_channel_multiplier": {"type": "integer", "minimum": 1},  # depthwise out/in
        "input_multiple_of": {"type": "integer", "minimum": 1},  # Gemm/MatMul K
        "max_kernel": {"type": "integer", "minimum": 1},
        "max_plane": {"type": "integer", "minimum": 1},  # H*W of a global pooling input
        "note": {"type": "string"},
    },
}

# p90 / median as a function of the median (ms): [[ms, factor], ...], interpolated in log(ms)
_P90_CURVE = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "array", "items": _POSITIVE, "minItems": 2, "maxItems": 2},
}

_LATENCY_PARAMS = {
    "efficiency": _PER_CLASS,  # fraction of peak compute each op class reaches
    "overhead_us": _PER_CLASS,  # fixed time per executed node of that class
    "activation_ns": _PER_CLASS,  # time per activation element read or written
    # the three above measured with cold caches: they replace them for a model whose
    # weights and activations exceed on-chip memory
    "cold": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "efficiency": _PER_CLASS,
            "overhead_us": _PER_CLASS,
            "activation_ns": _PER_CLASS,
        },
    },
    # share of a node's weight streaming (beyond on-chip memory) not hidden by its arithmetic
    "weight_stall": {"type": "number", "minimum": 0, "maximum": 1},
    "bandwidth_efficiency": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "onchip_bandwidth_gbs": _POSITIVE,  # bandwidth when a node's working set fits on chip
    "bandwidth_gbs": _POSITIVE,  # override of memory.bandwidth_gbs (measured)
    "fixed_overhead_us": _NON_NEGATIVE,  # per inference (dispatch, transfers)
    "free_node_us": _NON_NEGATIVE,  # per node that moves no data (Flatten, Reshape) a runtime runs
    "cache_bandwidth_gbs": _POSITIVE,  # bandwidth when a working set fits memory.cache_kb
    # effective capacities (measured: other data and other tenants share the caches)
    "onchip_kb": _NON_NEGATIVE,
    "cache_kb": _NON_NEGATIVE,
}

_PER_PRECISION_CLASS = {  # precision -> class -> multiplier on that class's efficiency
    "type": "object",
    "propertyNames": {"enum": PRECISIONS},
    "additionalProperties": {**_PER_CLASS, "additionalProperties": _POSITIVE},
}
# What `sigdl targets fit TARGET` writes (services/retest/targetfit.py): the latency figures
# fitted to the target's published calibration set, which replace the data sheet's, and the
# fit's bookkeeping: its residuals per published figure, their summary, and the interval
# (low, high factors on a prediction) from them
_FITTED = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "efficiency": _PER_CLASS,
        "overhead_us": _PER_CLASS,
        "fixed_overhead_us": _NON_NEGATIVE,
        "bandwidth_efficiency": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "host_copy_gbs": _POSITIVE,
        "conv_weight_factor": _POSITIVE,
        "half_rate_outputs": _POSITIVE,
        "non3x3_efficiency": _POSITIVE,
        "precision_activation_ns": {**_PER_PRECISION, "additionalProperties": _NON_NEGATIVE},
        "activation_ns": _PER_CLASS,
        "precision_efficiency": _PER_PRECISION,
        "precision_class_efficiency": _PER_PRECISION_CLASS,
        "runtime": {"type": "string"},  # the runtime the fitted figures are of
        # other runtimes on the same board: their time against `runtime`'s
        "runtimes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["time_scale"],
                "properties": {"time_scale": _POSITIVE},
            },
        },
        "interval": {"type": "array", "items": _POSITIVE, "minItems": 2, "maxItems": 2},
        "residuals": {"type": "array", "items": {"type": "object"}},
        "summary": {"type": "object"},
        "source": {"type": "string"},
    },
}

# How a cpu-limited (x86) target's retest turns a time measured on pinned host cores into
# the target's (services/retest/emulate.py): with no `fitted` factor, from the two profiles'
# data-sheet figures, and `factor_basis` says so; `sigdl targets fit` writes `fitted` (one
# factor from published measurements of that target) once such measurements exist
_HOST_FACTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["factor_basis", "fitted"],
    "properties": {
        "factor_basis": {"type": "string", "minLength": 1},  # shown in every retest report
        "formula": {"type": "string"},
        "fitted": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["factor", "source"],
                    "properties": {
                        "factor": _POSITIVE,  # target time / host time at the same threads
                        "source": {"type": "string"},  # the measurements it was fitted to
                        "entries": {"type": "integer", "minimum": 1},
                        "residuals": {"type": "array", "items": {"type": "object"}},
                    },
                },
            ]
        },
    },
}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SigDL target profile",
    "type": "object",
    "additionalProperties": False,
    "required": REQUIRED,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "description": {"type": "string"},
        "kind": {"enum": ["cpu", "gpu", "vpu", "dsp"]},
        "emulation": {
            "type": "object",
            "additionalProperties": False,
            "required": ["method"],
            "properties": {
                # native: this machine, measured; cpu-limited: an x86 CPU with core/clock
                # limits stands in; same-class: hardware of the same class; model: analytic only
                "method": {"enum": ["native", "cpu-limited", "same-class", "model"]},
                "notes": {"type": "string"},
                "host_factor": _HOST_FACTOR,  # cpu-limited: host time -> target time
            },
            # a cpu-limited target is measured on pinned host cores and scaled
            "if": {"properties": {"method": {"const": "cpu-limited"}}},
            "then": {"required": ["host_factor"]},
        },
        "compute": {
            "type": "object",
            "additionalProperties": False,
            "required": ["units", "unit_kind", "cores", "clock_ghz", "peak_gops"],
            "properties": {
                "units": {"type": "integer", "minimum": 1},  # cores, CUDA cores, SHAVEs
                "unit_kind": {"type": "string"},
                "cores": {"type": "integer", "minimum": 1},  # what threads are spread over
                "clock_ghz": _POSITIVE,
                "peak_gops": _PER_PRECISION,  # whole device at clock_ghz
            },
        },
        "memory": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ram_mb", "bandwidth_gbs", "onchip_kb"],
            "properties": {
                "ram_mb": _POSITIVE,
                "bandwidth_gbs": _POSITIVE,
                "onchip_kb": _NON_NEGATIVE,
                "cache_kb": _NON_NEGATIVE,  # a shared last-level cache between chip and DRAM
                "kind": {"type": "string"},
            },
        },
        "precisions": {
            "type": "array",
            "items": {"enum": PRECISIONS},
            "minItems": 1,
            "uniqueItems": True,
        },
        "native_precision": {"enum": PRECISIONS},
        "weight_bits": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 32},
            "minItems": 2,
            "maxItems": 2,
        },
        "latency_model": {
            "type": "object",
            "additionalProperties": False,
            "required": ["efficiency", "overhead_us", "bandwidth_efficiency"],
            "properties": {
                **_LATENCY_PARAMS,
                "p90_factor": {"type": "number", "minimum": 1},  # p90 / typical latency
                "p90_extra_us": _NON_NEGATIVE,  # p90 = typical x factor + extra
                "p90_dram_factor": {"type": "number", "minimum": 1},  # for DRAM-bound time
                "p90_dram_ms": {"type": "number", "exclusiveMinimum": 0},  # measured at (ms)
                # convolutions run in blocks of this many channels (ORT NCHWc): padded work
                "channel_block": {"type": "integer", "minimum": 1},
                # a broadcast op with fewer spans than this per thread runs on one thread
                "broadcast_spans_per_thread": {"type": "integer", "minimum": 1},
                # a gemm gets one thread per this many multiplies, and one more
                "gemm_macs_per_thread": {"type": "integer", "minimum": 1},
                "fuses": {  # [producer, consumer] pairs the runtime runs as one node
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
                "precision_efficiency": _PER_PRECISION,  # multiplier on efficiency
                # per class, where it differs from precision_efficiency (ncnn int8 depthwise)
                "precision_class_efficiency": _PER_PRECISION_CLASS,
                # an accelerator's input and output copies between host and device
                "host_copy_gbs": _POSITIVE,
                # bytes a kernel>1 conv streams per weight byte: a runtime that stores its
                # kernels transformed (Winograd F(6,3): 64 / 9) streams more of them
                "conv_weight_factor": _POSITIVE,
                # a compute node with this many outputs reaches half its class's efficiency
                # (a GPU's blocks, a CPU's tiles fill up with outputs): eff x out / (out + h)
                "half_rate_outputs": _POSITIVE,
                # multiplier on the conv class's efficiency for kernels other than 3x3
                "non3x3_efficiency": _POSITIVE,
                # per precision, ns per activation element a compute node reads or writes
                # (a runtime that quantizes and dequantizes around each int8 layer)
                "precision_activation_ns": {
                    **_PER_PRECISION,
                    "additionalProperties": _NON_NEGATIVE,
                },
                "fitted": _FITTED,
                # measured per thread count (host): overrides of the fields above
                "calibrated": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[0-9]+$"},
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            **_LATENCY_PARAMS,
                            "p90_factor": {"type": "number"},
                            "p90_extra_us": _NON_NEGATIVE,
                            "p90_curve": _P90_CURVE,
                            "p90_dram_factor": {"type": "number", "minimum": 1},
                            "p90_dram_ms": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                },
                "calibration_source": {"type": "string"},
            },
        },
        "power": {
            "type": "object",
            "additionalProperties": False,
            "required": ["idle_w", "active_w", "pj_per_op", "pj_per_dram_byte"],
            "properties": {
                "idle_w": _NON_NEGATIVE,
                "active_w": _POSITIVE,  # the most the device draws (TDP / power-mode cap)
                "pj_per_op": _PER_PRECISION,  # dynamic energy per arithmetic operation
                "pj_per_dram_byte": _NON_NEGATIVE,
                "note": {"type": "string"},
            },
        },
        "operators": {
            "type": "object",
            "additionalProperties": False,
            "required": ["supported"],
            "properties": {
                "max_batch": {"type": "integer", "minimum": 1},
                "supported": {
                    "type": "object",
                    "additionalProperties": {"oneOf": [{"type": "null"}, _CONSTRAINTS]},
                    "minProperties": 1,
                },
                "source": {"type": "string"},
            },
        },
        "modes": {  # named power modes: partial overrides of compute/power/memory
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "clock_ghz": _POSITIVE,
                    "cores": {"type": "integer", "minimum": 1},
                    "idle_w": _NON_NEGATIVE,
                    "active_w": _POSITIVE,
                    "note": {"type": "string"},
                },
            },
        },
        "default_mode": {"type": "string"},
        # the machine a measured profile (host) was calibrated on
        "measured_on": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cpu", "cores", "date"],
            "properties": {
                "cpu": {"type": "string"},  # CPU model (/proc/cpuinfo)
                "cores": {"type": "integer", "minimum": 1},  # usable by the calibration
                "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            },
        },
    },
}


if __name__ == "__main__":
    print(json.dumps(SCHEMA, indent=2))

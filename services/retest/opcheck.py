"""Every node of a model checked against a target's operator list and its constraints.

A node fails with its name, type and the rule it breaks, e.g.
`{"node": "/features.0/Conv", "op": "Conv", "rule": "kernel 7x7 stride 2 (7x7s2) not in
[1x1s1, 3x3s1, ...]"}`. Q/DQ/Cast nodes are how an ONNX model spells its numerics, not
operators a target runs, so they are not checked. A quantized op (QLinearConv, ConvInteger,
QGemm...) is checked as its float op on a target that runs int8. Ops the latency model does not
know are listed under "unknown" with how they were estimated.

    result = check_operators(analyze(model), load_profile("movidius-ma2450"))
"""

from __future__ import annotations

from services.retest.graph import (
    KNOWN_DOMAINS,
    NUMERICS_OPS,
    POOL_OPS,
    UNKNOWN,
    UNKNOWN_ESTIMATE,
    Graph,
    Node,
)


def _kernel_stride(node: Node) -> tuple[str, str | None]:
    """("KhxKwsS", a rule broken by the geometry itself or None)."""
    kernel = node.attrs.get("kernel_shape") or node.weight_shape[2:] or [1, 1]
    strides = node.attrs.get("strides") or [1] * len(kernel)
    label = f"{'x'.join(map(str, kernel))}s{strides[0]}"
    if len(set(strides)) > 1:
        return label, f"asymmetric stride {strides}"
    return label, None


def _conv_rules(node: Node, rules: dict) -> list[str]:
    broken = []
    label, geometry = _kernel_stride(node)
    if geometry:
        broken.append(geometry)
    channels = node.in_shape[1] if len(node.in_shape) > 1 else 0
    depthwise = node.op_class == "depthwise"
    allowed = rules.get("depthwise_allowed" if depthwise else "allowed")
    if allowed is not None and label not in allowed:
        kind = "depthwise kernel" if depthwise else "kernel"
        broken.append(f"{kind} {label} not in [{', '.join(allowed)}]")
    if depthwise and "max_channel_multiplier" in rules and node.weight_shape:
        multiplier = node.weight_shape[0] // max(channels, 1)
        if multiplier > rules["max_channel_multiplier"]:
            broken.append(f"channel multiplier {multiplier} > {rules['max_channel_multiplier']}")
    return broken


def _node_rules(node: Node, rules: dict) -> list[str]:
    """The constraints of `rules` that `node` breaks."""
    broken = []
    if node.float_op == "Conv":
        broken += _conv_rules(node, rules)
    elif node.float_op in POOL_OPS and "allowed" in rules:
        label, geometry = _kernel_stride(node)
        if geometry or label not in rules["allowed"]:
            broken.append(geometry or f"window {label} not in [{', '.join(rules['allowed'])}]")
    if "max_plane" in rules and len(node.in_shape) == 4:
        plane = node.in_shape[2] * node.in_shape[3]
        if plane > rules["max_plane"]:
            broken.append(f"input plane {plane} (H*W) > {rules['max_plane']}")
    if "input_multiple_of" in rules and node.in_shape:
        k = node.in_shape[-1]
        if k % rules["input_multiple_of"]:
            broken.append(f"input size {k} is not a multiple of {rules['input_multiple_of']}")
    if "max_kernel" in rules:
        kernel = node.attrs.get("kernel_shape") or node.weight_shape[2:]
        if kernel and max(kernel) > rules["max_kernel"]:
            broken.append(f"kernel {kernel} larger than {rules['max_kernel']}")
    return broken


# Nodes that only hold data (an exporter writes Clip's bounds and Reshape's shape as Constant
# nodes): every runtime folds them into an initializer, so no target's operator list names them.
CONSTANT_OPS = {"Constant"}


def check_operators(graph: Graph, profile: dict, batch: int | None = None) -> dict:
    """{"passed", "checked", "failures": [{"node", "op", "rule"}], "op_types", "source",
    "unknown": [{"node", "op", "domain", "estimate"}]}; `batch`: the model's by default."""
    ops = profile["operators"]
    batch = graph.batch if batch is None else batch
    supported = ops["supported"]
    failures = []
    max_batch = ops.get("max_batch")
    if max_batch is not None and batch > max_batch:
        failures.append({"node": "<input>", "op": "batch", "rule": f"batch {batch} > {max_batch}"})
    checked = 0
    for node in graph.nodes:
        if node.op_type in NUMERICS_OPS or node.op_type in CONSTANT_OPS:
            continue
        checked += 1
        listed = _listed_as(node, profile)
        if listed is None:
            rule = f"{node.op_type} is not in {profile['name']}'s operator list"
            failures.append({"node": node.name, "op": node.op_type, "rule": rule})
            continue
        for rule in _node_rules(node, supported[listed] or {}):
            failures.append({"node": node.name, "op": node.op_type, "rule": rule})
    op_types = sorted(
        {n.op_type for n in graph.nodes if n.op_type not in NUMERICS_OPS | CONSTANT_OPS}
    )
    return {"passed": not failures, "checked": checked, "failures": failures,
            "op_types": op_types, "source": ops.get("source", ""),
            "unknown": unknown_ops(graph)}  # fmt: skip


def _listed_as(node: Node, profile: dict) -> str | None:
    """The entry of the target's operator list that covers `node`: its own type, or for a
    quantized op (QLinearConv, ConvInteger, QGemm...) its float op on a target with int8."""
    supported = profile["operators"]["supported"]
    if node.domain not in KNOWN_DOMAINS:
        return None  # a custom domain's op is not ONNX's op of the same name
    if node.op_type in supported:
        return node.op_type
    if node.float_op != node.op_type and "int8" in profile["precisions"]:
        return node.float_op if node.float_op in supported else None
    return None


def unknown_ops(graph: Graph) -> list[dict]:
    """The nodes the latency model has no cost for, or whose output shape was assumed, and
    how each was estimated instead."""
    found = []
    for node in graph.nodes:
        reasons = []
        if node.op_class == UNKNOWN:
            domain = f" of domain {node.domain!r}" if node.domain else ""
            reasons.append(
                f"op {node.op_type}{domain} unknown to the latency model: {UNKNOWN_ESTIMATE}"
            )
        if node.shape_assumed:
            reasons.append("output shape not inferable: taken as its first input's")
        if reasons:
            found.append(
                {
                    "node": node.name,
                    "op": node.op_type,
                    "domain": node.domain,
                    "estimate": "; ".join(reasons),
                }
            )
    return found

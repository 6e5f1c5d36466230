"""Every node of a model checked against a target's operator list and its constraints.

A node fails with its name, type and the rule it breaks, e.g.
`{"node": "/features.0/Conv", "op": "Conv", "rule": "kernel 7x7 stride 2 (7x7s2) not in
[1x1s1, 3x3s1, ...]"}`. Q/DQ/Cast nodes are how an ONNX model spells its numerics, not
operators a target runs, so they are not checked.

    result = check_operators(analyze(model), load_profile("movidius-ma2450"))
"""

from __future__ import annotations

from services.retest.graph import NUMERICS_OPS, POOL_OPS, Graph, Node


def _kernel_stride(node: Node) -> tuple[str, str | None]:
    """("KhxKwsS", a rule broken by the geometry itself or None)."""
    kernel = node.attrs.get("kernel_shape") or node.weight_shape[2:] or [1, 1]
    strides = node.attrs.get("strides", [1] * len(kernel))
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
    if node.op_type == "Conv":
        broken += _conv_rules(node, rules)
    elif node.op_type in POOL_OPS and "allowed" in rules:
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


def check_operators(graph: Graph, profile: dict, batch: int = 1) -> dict:
    """{"passed", "checked", "failures": [{"node", "op", "rule"}], "op_types", "source"}."""
    ops = profile["operators"]
    supported = ops["supported"]
    failures = []
    max_batch = ops.get("max_batch")
    if max_batch is not None and batch > max_batch:
        failures.append({"node": "<input>", "op": "batch", "rule": f"batch {batch} > {max_batch}"})
    checked = 0
    for node in graph.nodes:
        if node.op_type in NUMERICS_OPS:
            continue
        checked += 1
        if node.op_type not in supported:
            rule = f"{node.op_type} is not in {profile['name']}'s operator list"
            failures.append({"node": node.name, "op": node.op_type, "rule": rule})
            continue
        for rule in _node_rules(node, supported[node.op_type] or {}):
            failures.append({"node": node.name, "op": node.op_type, "rule": rule})
    op_types = sorted({n.op_type for n in graph.nodes if n.op_type not in NUMERICS_OPS})
    return {"passed": not failures, "checked": checked, "failures": failures,
            "op_types": op_types, "source": ops.get("source", "")}  # fmt: skip

"""Lowering to an ExecuTorch program with XNNPACK, and what got delegated."""

from dataclasses import dataclass

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import to_edge_transform_and_lower

from edge.bundle import APP_METHOD, FORWARD

# The program's methods and the memory layout each takes its input in (edge.bundle describes them in model.json).
LAYOUTS = {FORWARD: torch.contiguous_format, APP_METHOD: torch.channels_last}
METHODS = tuple(LAYOUTS)

# Ops that carry the network's weights: all of them must run inside XNNPACK.
WEIGHTED_OPS = ("convolution", "linear", "addmm", "_mm")


@dataclass
class Delegation:
    subgraphs: int
    by_op: dict[str, tuple[int, int]]  # op -> (delegated, not delegated)

    @property
    def undelegated_weighted_ops(self) -> dict[str, int]:
        return {op: n for op, (_, n) in self.by_op.items() if n and any(w in op for w in WEIGHTED_OPS)}

    def summary(self) -> str:
        """One line: what XNNPACK took and what stayed outside (the full table is in report.json)."""
        inside = sum(d for d, _ in self.by_op.values())
        outside = ", ".join(f"{op} x{n}" for op, (_, n) in sorted(self.by_op.items()) if n) or "nothing"
        return f"XNNPACK: {inside} nodes in {self.subgraphs} delegated subgraph(s); outside: {outside}"

    def to_json(self) -> dict:
        return {
            "subgraphs": self.subgraphs,
            "by_op": {op: {"delegated": d, "not_delegated": n} for op, (d, n) in self.by_op.items()},
        }


def global_pools_as_means(program: torch.export.ExportedProgram) -> None:
    """Rewrite each ``adaptive_avg_pool2d(x, 1)`` as ``mean(x, (-1, -2), keepdim=True)``, the same function.

    On a channels-last input the pool decomposes into a mean and an ``as_strided`` copy, which XNNPACK
    does not take: the program would split at every squeeze-excitation block. The mean alone it takes.
    The quantize/dequantize pair around the pool stays where it was, so an int8 graph keeps its int8 mean.
    """
    graph = program.graph_module.graph
    for node in graph.nodes:
        if node.target == torch.ops.aten.adaptive_avg_pool2d.default and list(node.args[1]) == [1, 1]:
            node.target, node.args = torch.ops.aten.mean.dim, (node.args[0], [-1, -2], True)
    program.graph_module.recompile()


def _input_name(program: torch.export.ExportedProgram, node: torch.fx.Node) -> str | None:
    """The state-dict name of the weight, bias or quantization scale ``node`` reads, if nothing else reads it."""
    signature = program.graph_signature
    name = signature.inputs_to_parameters.get(node.name) or signature.inputs_to_buffers.get(node.name)
    return name if name is not None and len(node.users) == 1 else None


def _scale_and_shift(program: torch.export.ExportedProgram, name: str, scale: float, shift: float) -> None:
    """Replace a state-dict entry by ``tensor * scale + shift``: a new tensor, for the old one is the model's own
    and the other methods export it too."""
    old = program.state_dict[name]
    new = old.detach() * scale + shift
    is_parameter = isinstance(old, torch.nn.Parameter)
    program.state_dict[name] = torch.nn.Parameter(new, requires_grad=False) if is_parameter else new


def _gated_convolution(gate: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node] | None:
    """For ``hardsigmoid(conv(x, W, b))`` the convolution, the input holding W's scale and the bias.

    A float graph's W is a parameter and its scale is W itself. An int8 graph's convolution computes on
    ``dequantize_per_channel(W8, S, ...)`` and quantizes its output before the gate: S is the scale.
    """
    producer = gate.args[0]
    if producer.target == torch.ops.quantized_decomposed.dequantize_per_tensor.default:
        quantize = producer.args[0]
        if len(producer.users) != 1 or quantize.target != torch.ops.quantized_decomposed.quantize_per_tensor.default:
            return None
        producer = quantize.args[0] if len(quantize.users) == 1 else None
    if producer is None or producer.target != torch.ops.aten.conv2d.default or len(producer.users) != 1:
        return None
    weight, bias = producer.args[1], producer.args[2] if len(producer.args) > 2 else None
    if weight.target == torch.ops.quantized_decomposed.dequantize_per_channel.default:
        weight = weight.args[1]
    return (producer, weight, bias) if isinstance(bias, torch.fx.Node) and weight.op == "placeholder" else None


def gates_folded_into_convolutions(program: torch.export.ExportedProgram) -> None:
    """Rewrite each ``hardsigmoid(conv(x, W, b))`` as ``clamp(conv(x, W / 6, b / 6 + 1/2), 0, 1)``, the same function.

    The squeeze-excitation gate of MobileNetV3. Its hard-sigmoid, ``clamp(y + 3, 0, 6) / 6``, would lower
    to an add and a divide by constant tensors that XNNPACK's layout pass runs in NCHW, so each gate costs
    two transposes too (and in int8 two conversions to float and back): five to seven operators that at
    64 px weigh more than their arithmetic. Folded into the weights, the clamp is the convolution's own
    output bound and the gate is one operator.

    In an int8 graph W is folded through its per-channel scale (the int8 weights stay the same) and the
    convolution's output goes straight to the gate's quantization. The step that rounded it to a grid of
    its own before the gate is gone, so the program's gate differs from the PyTorch int8 model's by that
    rounding, within the int8 parity rule (docs/benchmarks.md measures what it changes).
    """
    for gate in list(program.graph.nodes):
        found = _gated_convolution(gate) if gate.target == torch.ops.aten.hardsigmoid.default else None
        names = found and (_input_name(program, found[1]), _input_name(program, found[2]))
        if not found or not all(names):
            continue
        _scale_and_shift(program, names[0], 1 / 6, 0.0)
        _scale_and_shift(program, names[1], 1 / 6, 0.5)
        conv = found[0]
        dropped = gate.args[0] if gate.args[0] is not conv else None
        gate.target, gate.args = torch.ops.aten.hardtanh.default, (conv, 0.0, 1.0)
        while dropped is not None:  # the int8 graph's quantize and dequantize between them, now unread
            above = dropped.args[0]
            program.graph.erase_node(dropped)
            dropped = above if above is not conv else None
    program.graph_module.recompile()


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def hard_sigmoids_in_float(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Decompose each hard-sigmoid with float constants: the same function, all of it inside XNNPACK.

    For the gates :func:`gates_folded_into_convolutions` leaves, an int8 graph's. torch's own decomposition,
    ``clamp(x + 3, 0, 6) / 6``, writes its constants as integers. The lowering keeps them as int64 tensors and
    converts each to float outside the delegate on every call: 18 kernel calls in a V3-Small, for nothing.
    """
    return program.run_decompositions({torch.ops.aten.hardsigmoid.default: _hard_sigmoid})


def to_pte(
    model: torch.nn.Module | torch.fx.GraphModule, resolution: int, methods: tuple[str, ...] = METHODS
) -> tuple[bytes, Delegation]:
    """Export at batch 1 (one camera frame per call), one method per input layout, and lower with XNNPACK.

    ``forward`` takes a contiguous NCHW tensor, what every ExecuTorch runtime and mobile library passes
    (``Tensor.fromBlob(floats, shape)``, ``torch.rand(1, 3, H, W)``). ``forward_channels_last`` takes NHWC
    memory, the layout XNNPACK computes in and the app's preprocessor produces: it starts with its first
    convolution, not with a transpose of the frame. XNNPACK keys its weights by their hash, so the two
    methods share them and the second costs a few percent of the file. ``methods`` picks a subset (the
    programs export only compares need the app's alone).

    A static batch keeps the final flatten a static view, which XNNPACK takes: a dynamic batch leaves it
    outside and splits the program in two. The returned delegation is the worst of the methods'.
    """
    example = torch.randn(1, 3, resolution, resolution)
    programs = {
        name: torch.export.export(model, (example.contiguous(memory_format=LAYOUTS[name]),)) for name in methods
    }
    for program in programs.values():
        global_pools_as_means(program)
        gates_folded_into_convolutions(program)
    programs = {name: hard_sigmoids_in_float(program) for name, program in programs.items()}
    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
    delegations = []
    for name in methods:
        info = get_delegation_info(edge.exported_program(name).graph_module)
        delegations.append(
            Delegation(
                info.num_delegated_subgraphs,
                {op: (b.delegated, b.non_delegated) for op, b in info.delegation_by_operator.items()},
            )
        )
    worst = max(delegations, key=lambda d: (sum(d.undelegated_weighted_ops.values()), d.subgraphs))
    return edge.to_executorch().buffer, worst


def activation_scales(model: torch.fx.GraphModule) -> tuple[float, float] | None:
    """The smallest and largest activation scale of a converted int8 graph (None: no quantized activations)."""
    scales = [
        n.args[1]
        for n in model.graph.nodes
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and isinstance(n.args[1], float)
    ]
    return (min(scales), max(scales)) if scales else None

"""Lowering to an ExecuTorch program with XNNPACK, and what got delegated."""

from dataclasses import dataclass

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
from executorch.exir.passes import MemoryPlanningPass

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
        """One line: what XNNPACK took and what stayed outside (the full table is in report.json).

        ``getitem`` is how the graph takes the delegate's output, not an operator that runs: not counted.
        """
        inside = sum(d for op, (d, _) in self.by_op.items() if op != "getitem")
        ops = sorted(self.by_op.items())
        outside = ", ".join(f"{op} x{n}" for op, (_, n) in ops if n and op != "getitem") or "nothing"
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


def _parameter(program: torch.export.ExportedProgram, node: object) -> str | None:
    """The state-dict name of the parameter ``node`` reads, if it is one and nothing else reads it."""
    if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
        return None
    return program.graph_signature.inputs_to_parameters.get(node.name)


def gates_folded_into_convolutions(program: torch.export.ExportedProgram) -> None:
    """Rewrite each ``hardsigmoid(conv(x, W, b))`` as ``clamp(conv(x, W / 6, b / 6 + 1/2), 0, 1)``, the same function.

    The squeeze-excitation gate of a float MobileNetV3. Its hard-sigmoid, ``clamp(y + 3, 0, 6) / 6``, would
    lower to an add and a divide by constant tensors that XNNPACK's layout pass runs in NCHW, so each gate
    costs two transposes too: five operators that at 64 px weigh more than their arithmetic. Folded into
    the weights, the clamp is the convolution's own output bound and the gate is one operator. The new
    weights are new tensors: the old ones are the model's own, and the other methods export them too.

    An int8 graph's gate stays as it is: its convolution's output is quantized before the gate, a rounding
    QAT trained with, which a fold would take away (docs/benchmarks.md measures what that did).
    """
    for gate in program.graph.nodes:
        conv = gate.args[0] if gate.target == torch.ops.aten.hardsigmoid.default else None
        if conv is None or conv.target != torch.ops.aten.conv2d.default or len(conv.users) != 1:
            continue
        bias_arg = conv.args[2] if len(conv.args) > 2 else None
        weight, bias = _parameter(program, conv.args[1]), _parameter(program, bias_arg)
        if weight is None or bias is None:
            continue
        state = program.state_dict
        state[weight] = torch.nn.Parameter(state[weight].detach() / 6, requires_grad=False)
        state[bias] = torch.nn.Parameter(state[bias].detach() / 6 + 0.5, requires_grad=False)
        gate.target, gate.args = torch.ops.aten.hardtanh.default, (conv, 0.0, 1.0)
    program.graph_module.recompile()


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def hard_sigmoids_in_float(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Decompose each hard-sigmoid with float constants: the same function, all of it inside XNNPACK.

    For the gates :func:`gates_folded_into_convolutions` leaves: an int8 graph's. torch's own decomposition,
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

    The input is not memory-planned: a runtime reads the caller's tensor in place (ExecuTorch's
    ``Method::set_input`` shares a tensor that has no planned buffer, and copies one that has), where a
    planned input costs a copy of the frame per call (602 KB at 224 px).
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
    in_place = ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False))
    return edge.to_executorch(in_place).buffer, worst


def activation_scales(model: torch.fx.GraphModule) -> tuple[float, float] | None:
    """The smallest and largest activation scale of a converted int8 graph (None: no quantized activations)."""
    scales = [
        n.args[1]
        for n in model.graph.nodes
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and isinstance(n.args[1], float)
    ]
    return (min(scales), max(scales)) if scales else None

"""Lowering to an ExecuTorch program with XNNPACK, and what got delegated."""

from dataclasses import dataclass

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import to_edge_transform_and_lower

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


def to_pte(model: torch.nn.Module | torch.fx.GraphModule, resolution: int) -> tuple[bytes, Delegation]:
    """Export at batch 1 (one camera frame per call), with a channels-last input, and lower with XNNPACK.

    A static batch keeps the final flatten a static view, which XNNPACK takes:
    a dynamic batch leaves it outside and splits the program in two. A channels-last input is NHWC in
    memory, the layout XNNPACK computes in and the preprocessor produces: the program then starts with
    its first convolution, not with a transpose of the frame (a quarter of a millisecond at 224 px on
    one x86 core). The runner reads the input's dim order from the program, so callers still pass NCHW.
    """
    example = (torch.randn(1, 3, resolution, resolution).to(memory_format=torch.channels_last),)
    program = torch.export.export(model, example)
    global_pools_as_means(program)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    delegation = Delegation(
        info.num_delegated_subgraphs,
        {op: (b.delegated, b.non_delegated) for op, b in info.delegation_by_operator.items()},
    )
    return edge.to_executorch().buffer, delegation


def activation_scales(model: torch.fx.GraphModule) -> tuple[float, float] | None:
    """The smallest and largest activation scale of a converted int8 graph (None: no quantized activations)."""
    scales = [
        n.args[1]
        for n in model.graph.nodes
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and isinstance(n.args[1], float)
    ]
    return (min(scales), max(scales)) if scales else None

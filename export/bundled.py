"""model.bpte: the program with its golden inputs and expected logits inside, in ExecuTorch's BundledProgram format.

ExecuTorch's own tools read it (the Python bindings' bundled-program verification, and the devtools example
runner built with bundled-program support), so a user can check a bundle's ``forward`` on any device without
our code. Export builds it from the program's bytes and checks it with that same verification before the
bundle is written.
"""

import tempfile

import numpy as np
import torch
from executorch.devtools import BundledProgram
from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer
from executorch.extension.pybindings.portable_lib import _load_bundled_program_from_buffer

from edge.bundle import FORWARD

from .verify import VerificationError


def bundled_program(pte: bytes, inputs: np.ndarray, logits: np.ndarray) -> bytes:
    """One test case per golden input for ``forward``, the method other runtimes call, over contiguous NCHW.

    Only ``forward``: ExecuTorch's BundledProgram serializer makes every input contiguous before it stores
    it (``TensorSpec.from_tensor(const=True)``), so a channels-last method's inputs would be stored, and
    fed to it, as NCHW memory. The app's method is checked by export's parity run on the native runner.
    """
    suite = MethodTestSuite(
        method_name=FORWARD,
        test_cases=[
            MethodTestCase(
                inputs=[torch.from_numpy(x).unsqueeze(0)], expected_outputs=[torch.from_numpy(y).unsqueeze(0)]
            )
            for x, y in zip(inputs, logits, strict=True)
        ],
    )
    with tempfile.NamedTemporaryFile(suffix=".pte") as program:  # BundledProgram reads a program from a path
        program.write(pte)
        program.flush()
        return serialize_from_bundled_program_to_flatbuffer(BundledProgram(None, [suite], pte_file_path=program.name))


def check_bundled_program(bpte: bytes, cases: int, atol: float) -> None:
    """Every test case through ExecuTorch's own runtime and bundled-program verification, within ``atol``."""
    loaded = _load_bundled_program_from_buffer(bpte)
    for i in range(cases):
        try:
            loaded.verify_result_with_bundled_expected_output(FORWARD, i, 0.0, atol)
        except RuntimeError as e:
            raise VerificationError(
                f"ExecuTorch's runtime gives other logits than the bundle's golden ones for {FORWARD} input {i} "
                f"(tolerance {atol:g}): {e}"
            ) from None

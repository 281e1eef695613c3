"""The device app: runs a bundle (model.pte + model.json) with the ExecuTorch runtime.

Imports nothing from training/ or export/ and no Lightning: the bundle is the contract.
``from edge import load`` is the Python API (edge/api.py).
"""


def __getattr__(name: str):
    """``edge.load``/``edge.Model`` on first use, so ``import edge.files`` stays free of OpenCV and the runtime."""
    if name in ("load", "Model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")

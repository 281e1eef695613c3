"""Checkpoint -> verified ExecuTorch bundle (``model.pte`` + ``model.json`` + report)."""
from training.quiet import silence_known_noise

silence_known_noise()  # before torchao and executorch are imported by any export module

"""Checkpoint -> verified ExecuTorch bundle (``model.pte`` + ``model.json`` + report)."""

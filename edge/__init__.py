"""The device app: runs a bundle (model.pte + model.json) with the ExecuTorch runtime.

Imports nothing from training/ or export/ and no Lightning: the bundle is the contract.
"""

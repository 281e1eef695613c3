"""The native ExecuTorch runner: C++ (runner.cpp), its build (build.py) and its ctypes binding (runner.py)."""

from .build import NativeError
from .runner import Runner

__all__ = ["NativeError", "Runner"]

"""The native ExecuTorch runner: C++ (runner.cpp), its build (build.py), its ctypes binding (runner.py), and a
program's first load vetted in a child process (vet.py)."""

from .build import NativeError
from .runner import Runner

__all__ = ["NativeError", "Runner"]

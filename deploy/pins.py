"""What pyproject.toml pins for a device, read in one place: the device's requirements and the executorch
version the host exports with and the device runs.

    python -m deploy.pins     the executorch requirement, for the Makefile's setup on a Pi
"""

import argparse
import tomllib
from pathlib import Path

from edge.command import HelpFormatter, UserError

ROOT = Path(__file__).resolve().parent.parent


def project() -> dict:
    """pyproject.toml's ``[project]`` table: the one place versions are pinned."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extra(name: str) -> list[str]:
    """The requirements of one of pyproject's extras (``peers-runtimes``: the peers' runtimes)."""
    return project()["optional-dependencies"][name]


def device_requirements() -> tuple[str, str]:
    """The device's pip requirements, from pyproject.toml (the one place versions are pinned).

    Two sets: the ordinary ones, and the ExecuTorch wheel, installed with --no-deps because the
    device uses only its lib/ and include/ (the native runner), never its torch dependency.
    """
    pins = [*project()["dependencies"], *extra("edge"), *(r for r in extra("dev") if r.startswith("pytest"))]
    return "\n".join(dict.fromkeys(pins)) + "\n", f"executorch=={executorch_pin()}\n"


def executorch_pin() -> str:
    """The executorch version pyproject.toml pins: the host exports with it, the device runs it. Read
    here only (the Makefile asks ``python -m deploy.pins``)."""
    found = [r.split("==", 1)[1] for r in extra("train") if r.startswith("executorch==")]
    if len(found) != 1:
        raise UserError("pyproject.toml pins no single executorch== in its train extra: pin one")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m deploy.pins", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    ).parse_args(argv)
    print(f"executorch=={executorch_pin()}")


if __name__ == "__main__":
    main()

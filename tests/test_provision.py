"""How the runtime reaches a Pi without internet or compiler there: the wheels' platform tags, pip's failures
in one line, the device's facts, and the choice between the runner built here and the device's own build.
End to end on the emulated, offline, compiler-less Pi: tests/test_arm.py."""

import json
import sys

import pytest

from deploy.environment import provision
from deploy.environment.provision import DeviceFacts, plan_runner, probe, too_old
from deploy.environment.wheelhouse import Platform, WheelhouseError, explain
from deploy.profile import load_device
from deploy.transport import DeployError
from deploy.transport.ssh import connect
from edge.native.build import library_path


def facts(**change) -> DeviceFacts:
    return DeviceFacts(
        **{"python": "3.11", "machine": "aarch64", "glibc": "2.36", "glibcxx": "3.4.30", "compiler": False} | change
    )


def test_wheels_are_asked_for_every_manylinux_the_device_glibc_runs():
    tags = Platform("aarch64", "2.36", "3.11").tags()
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert len(tags) == 36 - 17 + 2
    with pytest.raises(WheelhouseError, match="older than any wheel"):
        Platform("aarch64", "2.12", "3.11").tags()


@pytest.mark.parametrize(
    "stderr, expected",
    [
        (
            "ERROR: Could not find a version\nERROR: No matching distribution found for numpy>=1.24\n",
            "no wheel of numpy>=1.24 for Python 3.7 on aarch64 with glibc 2.36",
        ),
        ("WARNING: Retrying ... Max retries exceeded with url: /simple/numpy/\n", "cannot reach the package index"),
        ("something else\n", "downloading the device's wheels failed: something else"),
    ],
)
def test_pip_failures_are_one_line(stderr, expected):
    assert expected in explain(stderr, Platform("aarch64", "2.36", "3.7"))


def test_the_probe_reads_this_machine_as_it_would_a_device():
    found = probe(connect(load_device("local")), sys.executable)
    assert found.python == f"{sys.version_info.major}.{sys.version_info.minor}" and found.glibc.startswith("2.")
    assert found.glibcxx.startswith("3.4."), "libstdc++ found and its newest GLIBCXX read"


def test_a_runner_needing_a_newer_glibc_than_the_device_has_is_named():
    built_here = library_path()  # this machine's own build (make setup): a real ELF with GLIBC_ needs
    assert built_here.is_file()
    assert "needs GLIBC 2." in too_old(built_here, facts(glibc="2.0"))
    assert "needs GLIBCXX 3.4." in too_old(built_here, facts(glibcxx="3.4.0"))
    assert too_old(built_here, facts(glibc="9.99", glibcxx="9.9.99")) is None


def test_without_a_build_here_the_device_compiles_or_the_deploy_says_neither_can(tmp_path):
    target = connect(load_device("local"))
    venv = str(tmp_path / "venv")
    with pytest.raises(DeployError, match="cross-compiles for aarch64 only.*has no C\\+\\+ compiler"):
        plan_runner(target, facts(machine="riscv64"), venv)
    plan = plan_runner(target, facts(machine="riscv64", compiler=True), venv)
    assert plan.library is None and plan.origin.startswith("compiled on the device")
    runner = tmp_path / provision.runner_file(facts(machine="riscv64"), venv).removeprefix(str(tmp_path) + "/")
    runner.parent.mkdir(parents=True)
    runner.write_bytes(b"built before")
    assert not plan_runner(target, facts(machine="riscv64", compiler=True), venv).present, "an unfinished environment"
    (tmp_path / "venv" / ".complete").touch()
    assert plan_runner(target, facts(machine="riscv64"), venv).present, "already there: nothing to build"


def test_a_cached_wheelhouse_is_used_without_pip(tmp_path, monkeypatch):
    from deploy.environment import wheelhouse

    platform, packages, runtime = Platform("aarch64", "2.36", "3.11"), "numpy\n", "executorch==1\n"
    cached = tmp_path / f"aarch64-py3.11-{wheelhouse.key(platform, packages, runtime)}"
    cached.mkdir()
    (cached / wheelhouse.COMPLETE).write_text(json.dumps({"wheels": {}, "bytes": 0}))
    monkeypatch.setattr(wheelhouse, "download", lambda *a: pytest.fail("downloaded although cached"))
    assert wheelhouse.build(platform, packages, runtime, tmp_path) == (cached, False)

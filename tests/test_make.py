"""Make variables are user input: whatever a value holds (; $() ` quotes spaces, a leading -), it reaches its
program as exactly one argument, or make refuses it in one line. Checked on the shell lines `make -n` prints
for every target, and by running the deploy targets with a stub ssh and adb that would record a call."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# On make's command line `$$` is one `$`: the shell is handed $(touch ...), which a bad recipe would run.
HOSTILE = "x; touch PWNED; $$(touch PWNED2) `touch PWNED3` 'q' \"d\" -lead"
ARRIVES = HOSTILE.replace("$$", "$")


def make_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def make(*args: str, dry: bool = True, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *(["-n"] if dry else []), *args],
        cwd=ROOT,
        env=env or make_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """A directory make takes for a bundle (its model.json is a prerequisite); nothing reads it under -n."""
    folder = tmp_path_factory.mktemp("made") / "bundle"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    return folder


def words_of(output: str, program: str) -> list[str]:
    """The shell words of the first printed command that runs ``program`` (continuation lines joined, ; and <<<
    their own words)."""
    text = output.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if program in line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";<>|&")
    lexer.whitespace_split = True
    return list(lexer)


CASES = [
    # target, variable, the line's program, the flag it arrives as ("" for a positional argument)
    *[
        ("qat", var, "-m pipeline", flag)
        for var, flag in [
            ("MODEL", "--model"),
            ("DATA", "--data"),
            ("EPOCHS", "--epochs"),
            ("QAT_EPOCHS", "--qat-epochs"),
            ("RES", "--res"),
            ("WIDTH", "--width"),
            ("CKPT", "--ckpt"),
            ("WEIGHTS", "--weights"),
            ("RUN", "--run"),
            ("OUT", "--out"),
            ("ARGS", "--args"),
            ("EXPORT_ARGS", "--export-args"),
            ("RECIPE", "--recipe"),
        ]
    ],
    ("train", "DATA", "-m pipeline", "--data"),
    ("export", "CKPT", "-m export", ""),
    ("export", "PRECISION", "-m export", "--precision"),
    ("export", "OUT", "-m export", "--out"),
    ("export", "EXPORT_ARGS", "read -r -a", "<<<"),
    *[
        ("deploy", var, "-m deploy", flag)
        for var, flag in [
            ("DEVICE", ""),
            ("HOST", "--host"),
            ("PORT", "--port"),
            ("KEY", "--key"),
            ("REMOTE_DIR", "--remote-dir"),
            ("DEVICE_PYTHON", "--python"),
            ("THREADS", "--threads"),
            ("KNOWN_HOSTS", "--known-hosts"),
            ("SERIAL", "--serial"),
            ("REPORTS", "--reports"),
            ("BWLIMIT", "--bwlimit"),
        ]
    ],
    *[
        ("sweep", var, "-m sweep", flag)
        for var, flag in [
            ("DATA", "--data"),
            ("EPOCHS", "--epochs"),
            ("WEIGHTS", "--weights"),
            ("ARGS", "--args"),
            ("DEVICE", "--device"),
            ("BUDGET_MS", "--budget-ms"),
            ("JOBS", "--jobs"),
        ]
    ],
    ("bench-edge", "SOURCE", "-m edge.bench", "--source"),
    ("bench-edge", "BENCH_SECONDS", "-m edge.bench", "--seconds"),
    ("bench-edge", "THREADS", "-m edge.bench", "--threads"),
    ("demo", "SOURCE", "-m edge run", "--source"),
    ("demo", "SERVE", "-m edge run", "--serve"),
    ("demo", "THREADS", "-m edge run", "--threads"),
    ("demo", "ARGS", "read -r -a", "<<<"),
    ("device-report", "A", "-m device_tests.compare", ""),
    ("bench-qat", "DATA", "-m pipeline", "--data"),
    ("bench-qat", "ARGS", "-m pipeline", "--args"),
    ("bench-sweep", "ARGS", "-m sweep", "--args"),
]


@pytest.mark.parametrize("target, variable, program, flag", CASES)
def test_each_variable_arrives_as_one_argument(bundle_dir, target, variable, program, flag):
    others = {"export": ["CKPT=c.ckpt"], "device-report": ["B=b.json"]}.get(target, [])
    given = [*others, f"{variable}={HOSTILE}", f"BUNDLE={bundle_dir}"]
    result = make(target, *given)
    assert result.returncode == 0, result.stderr[-2000:]
    words = words_of(result.stdout, program)
    if flag == "<<<":
        assert words[words.index("<<<") + 1] == ARRIVES
    elif flag:
        assert f"{flag}={ARRIVES}" in words, words
    else:
        assert ARRIVES in words, words
    assert not any(word == "touch" for word in words), "nothing of the value became a command"


@pytest.mark.parametrize("variable", ["MODELS", "WIDTHS", "RES"])
def test_list_variables_arrive_a_word_each(variable):
    words = words_of(make("sweep", f"{variable}=a;b c$$(id)").stdout, "-m sweep")
    flag = {"MODELS": "--models", "WIDTHS": "--widths", "RES": "--res"}[variable]
    at = words.index(flag)
    assert words[at + 1 : at + 3] == ["a;b", "c$(id)"]


def test_a_bundle_path_is_never_make_syntax(tmp_path):
    """BUNDLE is checked in the shell, not as a make target: a ; or : in it would be make syntax there (a ;
    in a prerequisite list starts a recipe)."""
    odd = tmp_path / "my bundle;touch PWNED:x"
    odd.mkdir()
    (odd / "model.json").write_text("{}")
    words = words_of(make("deploy", f"BUNDLE={odd}").stdout, "-m deploy")
    assert f"--bundle={odd}" in words
    result = make("deploy", f"BUNDLE={tmp_path}/none;touch PWNED", dry=False)
    assert f"error: no bundle at {tmp_path}/none;touch PWNED: build one with make qat" in result.stderr
    assert not (ROOT / "PWNED").exists()


def make_error(result: subprocess.CompletedProcess) -> str:
    """make stopped with its own one error line (`Makefile:N: *** ...  Stop.`)."""
    errors = [line for line in result.stderr.splitlines() if "***" in line]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_test_repeat_checks_n_without_running_it():
    line = make_error(make("test-repeat", f"N={HOSTILE}"))
    assert "give the number of repeats" in line
    assert not (ROOT / "PWNED").exists() and not (ROOT / "PWNED2").exists()


def stub(bin_dir: Path, name: str, log: Path) -> None:
    (bin_dir / name).write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\nexit 1\n')
    (bin_dir / name).chmod(0o755)


def test_deploys_with_hostile_hosts_and_serials_run_nothing_and_say_so_in_one_line(tiny_bundle, tmp_path):
    """Run for real: the values reach python -m deploy, which refuses them; no shell ever sees them unquoted."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("ssh", "adb", "rsync"):
        stub(bin_dir, name, calls)
    env = make_env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for given in (
        ["DEVICE=rpi5", "HOST=127.0.0.1;touch PWNED;"],
        ["DEVICE=rpi5", "HOST=-oProxyCommand=touch PWNED"],
        ["DEVICE=android", "SERIAL=x;touch PWNED;"],
        ["DEVICE=rpi5", "HOST=pi@127.0.0.1", "REMOTE_DIR=my releases;touch PWNED"],
    ):
        result = make("deploy", f"BUNDLE={tiny_bundle}", "NO_TESTS=1", *given, dry=False, env=env, timeout=600)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert [line for line in result.stderr.splitlines() if line.startswith("error:")], result.stderr[-2000:]
        assert not any(p.name.startswith("PWNED") for p in [*ROOT.iterdir(), *tmp_path.iterdir()])

"""Deploy: profiles, the staged release, and a real deploy over SSH to an OpenSSH server on loopback."""

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import interrupt_once_copying, one_error_line, run_module

from deploy.cli import main as deploy_main
from deploy.environment import Environment, prune_environments
from deploy.pi import service_unit, smoke_run, stage
from deploy.pins import device_requirements
from deploy.profile import ProfileError, load_device, settings_from
from deploy.release import Releases, releases, write_manifest
from deploy.transport import DeployError, explain
from deploy.transport.adb import MAX_OUTPUT, parse_devices, run_bounded
from deploy.transport.ssh import SSHTarget, connect
from device_tests.compare import flatten, table
from edge.bundle import read_meta

SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """Here a real program is enough, not a trained one: the untrained tiny bundle (seconds, not minutes)."""
    return tiny_bundle


def test_profile_overrides_and_user_at_host():
    device = load_device("rpi5", host="alice@10.0.0.7", port=2200, threads=2)
    assert (device.user, device.host, device.port, device.threads) == ("alice", "10.0.0.7", 2200, 2)
    assert device.venv_flags == ["--system-site-packages"] and device.camera == "picamera"
    assert load_device("rpi5", host="pi5.lan").user == getpass.getuser(), "no default user: ssh's own rule"
    assert load_device("rpi5").key is None, "no forced key: ssh offers the user's usual keys"
    assert not load_device("local").ssh


@pytest.mark.parametrize(
    "host,message",
    [
        ("-oProxyCommand=touch /tmp/pwned", "is not a host name"),
        ("pi@-oProxyCommand=x", "is not a host name"),
        ("-x@pi5.lan", "is not a login name"),
        ("pi5.lan;ls", "is not a host name"),
        ("pi@", "is not a host name"),
    ],
)
def test_hosts_and_users_that_ssh_would_read_as_options_are_refused(host, message):
    with pytest.raises(ProfileError, match=message):
        load_device("rpi5", host=host)


def test_ssh_gets_the_destination_after_the_end_of_options(tmp_path):
    argv = SSHTarget(load_device("rpi5", host="me@pi5.lan")).command(["true"])
    assert argv[-3:] == ["--", "me@pi5.lan", "true"] and "IdentitiesOnly=yes" not in argv


@pytest.mark.parametrize(
    "override,message",
    [
        ({"key": "/no/such/key"}, "SSH key /no/such/key does not exist"),
        ({"port": 70000}, "is not a TCP port"),
        ({"threads": -1}, "threads -1 must be a whole number >= 1"),
    ],
)
def test_profile_values_are_checked(override, message):
    with pytest.raises(ProfileError, match=message):
        load_device("rpi5", **override)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--port", "0"], "argument --port: want a whole number >= 1"),
        (["--threads", "two"], "argument --threads"),
        (["--bwlimit", "-1"], "argument --bwlimit"),
        (["--serve", "host:port"], "--serve wants HOST:PORT"),
    ],
)
def test_deploy_arguments_name_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        deploy_main(["local", "--bundle", "nowhere", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_profile_errors_name_the_fix():
    with pytest.raises(ProfileError, match="pick one of android, android-emu, local, local-ssh, rpi5, rpi5-emu"):
        load_device("jetson")
    with pytest.raises(ProfileError, match="needs python.*DEVICE_PYTHON="):
        load_device("local-ssh")


def test_an_emulator_profile_reads_the_ssh_settings_it_wrote(tmp_path):
    with pytest.raises(ProfileError, match="start the device first"):
        settings_from(str(tmp_path / "ssh.yaml"), "rpi5-emu", "SSH", "make pi-emu")
    (tmp_path / "ssh.yaml").write_text("host: 127.0.0.1\nport: 4022\nuser: pi\nkey: /k\n")
    assert settings_from(str(tmp_path / "ssh.yaml"), "rpi5-emu", "SSH", "make pi-emu")["port"] == 4022
    (tmp_path / "ssh.yaml").write_text("just text")
    with pytest.raises(ProfileError, match="not a YAML mapping"):
        settings_from(str(tmp_path / "ssh.yaml"), "rpi5-emu", "SSH", "make pi-emu")
    device = load_device("rpi5-emu", host="pi@10.1.1.1", port=2022)
    assert device.emulated and device.facts()["emulated"] and device.budgets_ms == {}


def test_remote_commands_are_quoted_not_pasted(tmp_path):
    key = tmp_path / "my key"
    key.write_text("not used")
    target = SSHTarget(load_device("rpi5", key=str(key)))
    argv = target.command(["ls", "a b; rm -rf ~"], cwd="dir with space")
    assert argv[-1] == "cd 'dir with space' && ls 'a b; rm -rf ~'"
    assert argv[argv.index("-i") + 1] == str(key) and "BatchMode=yes" in argv and "IdentitiesOnly=yes" in argv


@pytest.mark.parametrize(
    "stderr,expected",
    [
        ("rsync: write failed: No space left on device (28)", "out of disk space"),
        ("pi@pi5: Permission denied (publickey,password).", "refused the SSH key"),
        ("ssh: connect to host 10.0.0.7 port 22: Connection refused", "refused the connection"),
        ("something new\nthe last line", "the last line"),
    ],
)
def test_failures_are_explained_in_one_line(stderr, expected):
    assert expected in explain(stderr, "pi@pi5:22")


def test_requirements_come_from_pyproject_without_torch():
    packages, runtime = device_requirements()
    pins = packages.split()
    assert any(p.startswith("pytest") for p in pins) and any(p.startswith("opencv-python-headless") for p in pins)
    assert not any(p.startswith(("torch", "executorch", "lightning", "torchvision")) for p in pins)
    assert runtime.split() == ["executorch==1.5.1"], "installed with --no-deps: only its runtime libraries"


def test_environments_no_kept_release_uses_are_removed(tmp_path):
    """A device switching from a torch venv (``venv``) to a keyed one keeps the old one while a release uses it."""
    releases, base = tmp_path / "releases", tmp_path / "venv"
    for name, env in (("r1", "venv"), ("r2", "venv-aaa"), ("r3", "venv-bbb")):
        (releases / name).mkdir(parents=True)
        (releases / name / "python").write_text(f"{tmp_path / env}/bin/python\n")
    for env in ("venv", "venv-aaa", "venv-bbb", "venv-old", "venvish"):
        (tmp_path / env / "bin").mkdir(parents=True)
    target = connect(load_device("local"))
    env = Environment(
        str(tmp_path), str(tmp_path), f"{tmp_path}/venv-bbb/bin/python", f"{tmp_path}/venv-bbb", str(base), None, None
    )
    prune_environments(target, str(releases), env)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["releases", "venv", "venv-aaa", "venv-bbb", "venvish"]
    shutil.rmtree(releases / "r1")
    prune_environments(target, str(releases), env)
    assert not (tmp_path / "venv").exists() and (tmp_path / "venv-aaa").exists()


def test_staged_release_verifies_and_detects_tampering(bundle, tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum (coreutils) not found")
    meta = read_meta(bundle)
    device = load_device("local")
    env = Environment(
        "/opt", "/opt/edge", "/opt/edge/venv-1/bin/python", "/opt/edge/venv-1", "/opt/edge/venv", None, None
    )
    stage(bundle, device, env, "v1", meta, tmp_path)
    assert {"edge", "device_tests", "bundle", "Makefile", "requirements.txt", "device.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == sorted(meta.files)
    assert f"{meta.pte_sha256}  bundle/model.pte" in (tmp_path / "MANIFEST.sha256").read_text()
    check = ["sha256sum", "--quiet", "--strict", "-c", "MANIFEST.sha256"]
    assert subprocess.run(check, cwd=tmp_path).returncode == 0
    with open(tmp_path / "bundle" / "model.pte", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    assert subprocess.run(check, cwd=tmp_path, capture_output=True).returncode != 0


def test_service_unit_runs_the_current_release_on_the_address_asked_for():
    unit = service_unit("/home/me/mobilenet-edge", "127.0.0.1:8080")
    assert "WorkingDirectory=/home/me/mobilenet-edge/current" in unit and "WantedBy=default.target" in unit
    assert "ExecStart=/usr/bin/make -s demo SERVE=127.0.0.1:8080\n" in unit, "the release's own demo command"
    make = ["make", "-s", "--eval", "deploy-args: ; @echo $(DEPLOY_ARGS)", "deploy-args", "SERVICE=1"]
    assert "--service\n" in subprocess.run(make, capture_output=True, text=True).stdout, "deploy's own --serve default"
    assert (
        "--serve=0.0.0.0:9000" in subprocess.run([*make, "SERVE=0.0.0.0:9000"], capture_output=True, text=True).stdout
    )


def test_a_release_that_fails_its_smoke_run_never_displaces_a_good_one(tmp_path):
    """Failed releases are set aside as .failed and do not count among the releases kept."""
    releases = tmp_path / "releases"
    for name in ("20260101-a", "20260102-b", "20260103-c"):
        (releases / name).mkdir(parents=True)
    (releases / "20260104-d.partial").mkdir()  # bundle-less: its first run fails
    target = connect(load_device("local"))
    kept = Releases(target, str(tmp_path))
    with pytest.raises(DeployError, match="failed its first run .*current is unchanged"):
        smoke_run(target, sys.executable, str(releases / "20260104-d.partial"), kept, "20260104-d")
    assert (releases / "20260104-d.failed").is_dir() and not (releases / "20260104-d.partial").exists()
    (releases / "20260105-e.failed").mkdir()
    (releases / "20260106-f").mkdir()
    kept.prune("20260106-f")
    assert sorted(p.name for p in releases.iterdir()) == [
        "20260102-b",
        "20260103-c",
        "20260104-d.failed",
        "20260105-e.failed",
        "20260106-f",
    ], "three good ones stay"


def test_the_release_lifecycle_stages_checks_switches_keeps_and_sets_aside(tmp_path):
    """The one lifecycle both flows use, over this machine's transport: a tampered copy never becomes a
    release, current switches by symlink, three finished releases are kept, and a full device is refused
    before anything is copied."""
    target, root = connect(load_device("local")), tmp_path / "device"
    versions = [f"2026010{i}-m-abcd" for i in range(1, 6)]
    for version in versions:
        staged = tmp_path / "staged" / version
        (staged / "bundle").mkdir(parents=True)
        (staged / "bundle" / "model.pte").write_bytes(version.encode())
        write_manifest(staged)
        with releases(target, str(root)) as kept:
            assert kept.push(staged, version) == f"{root}/releases/{version}.partial"
            assert kept.finish(version)[-1] == version
        assert os.readlink(root / "current") == f"releases/{version}" and not (root / ".deploy.lock").exists()
    assert sorted(p.name for p in (root / "releases").iterdir()) == versions[-3:]
    tampered = tmp_path / "staged" / versions[0]
    (tampered / "bundle" / "model.pte").write_bytes(b"changed after the manifest")
    with (
        pytest.raises(DeployError, match="checking the copy against its manifest failed"),
        releases(target, str(root)) as kept,
    ):
        kept.push(tampered, "20260106-m-abcd")
    with releases(target, str(root)) as kept:  # what the failed deploy left is cleared by the next one
        assert not list((root / "releases").glob("*.partial"))
        kept.push(tmp_path / "staged" / versions[1], "20260107-m-abcd")
        assert kept.set_aside("20260107-m-abcd").endswith("20260107-m-abcd.failed")
    assert os.readlink(root / "current") == f"releases/{versions[-1]}"

    class Full(type(target)):
        def free_space(self, path: str) -> int:
            return 10

    with pytest.raises(DeployError, match="out of disk space: the release needs .* MB under .*, 0.0 MB are free"):
        with releases(Full(target.device), str(root)) as kept:
            kept.push(tmp_path / "staged" / versions[1], "20260108-m-abcd")
    assert not list((root / "releases").glob("20260108*")) and target.free_space(str(root)) > 0


def test_compare_lines_up_every_figure():
    base = {
        "created": "t",
        "device": {"hostname": "pi", "model": "Pi 5"},
        "bundle": {"name": "m"},
        "versions": {"executorch": "1.5.1"},
    }
    a = base | {"figures": {"latency": {"1": {"p50": 2.0}}, "parity": {"ok": True}}}
    b = base | {"figures": {"latency": {"1": {"p50": 1.5}, "4": {"p50": 0.9}}}}
    assert flatten(a["figures"]) == {"latency.1.p50": 2.0}
    text = table(a, b)
    assert "| latency.1.p50 | 2.0 | 1.5 | -25.0% |" in text and "| latency.4.p50 | - | 0.9 | - |" in text


def tools_or_skip() -> None:
    missing = [tool for tool in ("ssh", "ssh-keygen", "rsync") if shutil.which(tool) is None]
    missing += [] if os.access(SSHD, os.X_OK) else ["sshd"]
    if missing:
        reason = f"{', '.join(missing)} not installed (make test-deps installs openssh-server, rsync)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI the SSH deploy test must run: {reason}")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """OpenSSH on 127.0.0.1 with a throwaway host key and client key; the login is the current user."""
    tools_or_skip()
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {home / 'sshd.pid'}\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert server.poll() is None, f"sshd did not start: {server.stderr.read()}"
            time.sleep(0.1)
    yield {"port": port, "home": home, "key": home / "client_key", "other_key": home / "other_key"}
    server.terminate()
    server.wait(timeout=10)


def make_deploy(sshd, bundle, remote, reports, *extra, key=None, port=None, **popen) -> list[str]:
    return [
        "make",
        "-s",
        "deploy",
        "DEVICE=local-ssh",
        f"BUNDLE={bundle}",
        f"PORT={port or sshd['port']}",
        f"KEY={key or sshd['key']}",
        f"KNOWN_HOSTS={sshd['home'] / 'known_hosts'}",
        f"REMOTE_DIR={remote}",
        f"DEVICE_PYTHON={sys.executable}",
        f"REPORTS={reports}",
        *extra,
    ]


def test_deploy_over_ssh_then_an_interrupted_deploy_keeps_the_first(sshd, bundle, tmp_path):
    remote, reports = tmp_path / "device", tmp_path / "reports"
    first = subprocess.run(make_deploy(sshd, bundle, remote, reports), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    current = (remote / "current").resolve()
    assert current.parent == remote / "releases" and (current / "bundle" / "model.pte").is_file()
    report = json.loads(next(reports.glob(f"local-ssh/{current.name}/device_report.json")).read_text())
    assert set(report["figures"]["latency"]) == {str(n) for n in range(1, os.cpu_count() + 1)}
    assert all(row["runs"] >= 200 and row["p50"] <= row["p99"] for row in report["figures"]["latency"].values())
    assert report["figures"]["parity"]["top1_agreement"] == 1.0 and report["figures"]["parity"]["images"] == 8
    assert report["figures"]["preprocessing_parity"]["images"] == 4
    assert report["bundle"]["pte_sha256"] == json.loads((bundle / "model.json").read_text())["pte_sha256"]
    assert report["tests"] and all(t["outcome"] in ("passed", "skipped") for t in report["tests"].values())
    assert all(len(row["samples_ms"]) == row["runs"] for row in report["figures"]["latency"].values())
    assert report["figures"]["pipeline"]["procedural"]["timeline"]["fps"], "a point per second of the pipeline run"
    home = reports / "local-ssh" / current.name
    assert (home / "device_report.png").stat().st_size > 10_000, "drawn on the host once the report came home"
    assert "](device_report.png)" in (home / "device_report.md").read_text()

    # A slow second copy (bandwidth-limited), interrupted like Ctrl-C once it is under way.
    second = interrupt_once_copying(make_deploy(sshd, bundle, remote, reports, "BWLIMIT=50"), remote / "releases")
    assert second.returncode != 0 and "interrupted" in second.stderr, second.stderr[-2000:]
    assert (remote / "current").resolve() == current, "current still points at the first release"
    run = subprocess.run(
        [sys.executable, "-m", "edge", "run", "bundle", "--source", "procedural", "--headless", "--max-frames", "5"],
        cwd=remote / "current",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "5 frames" in run.stdout, run.stderr[-2000:]

    # The next deploy clears the unfinished copy and switches.
    third = subprocess.run(
        make_deploy(sshd, bundle, remote, reports, "NO_TESTS=1"), capture_output=True, text=True, timeout=600
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert (remote / "current").resolve() != current and not list((remote / "releases").glob("*.partial"))


@pytest.mark.parametrize("problem,message", [("port", "refused the connection"), ("key", "refused the SSH key")])
def test_deploy_to_a_wrong_port_or_key_is_one_line(sshd, bundle, tmp_path, problem, message):
    port = free_port() if problem == "port" else None
    key = sshd["other_key"] if problem == "key" else None
    result = subprocess.run(
        make_deploy(sshd, bundle, tmp_path / "device", tmp_path / "reports", key=key, port=port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and message in error[0], result.stderr[-2000:]
    assert getpass.getuser() in error[0]


def test_one_demo_command_here_and_on_the_device(tmp_path):
    """The host's make demo runs the release Makefile's demo target: one command line for both."""

    def printed(*argv, cwd):
        """The command that runs the app, as shell words."""
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
        out = subprocess.run(
            ["make", "--no-print-directory", "-n", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        ).stdout
        line = next(line for line in out.replace("\\\n", " ").splitlines() if "-m edge run" in line)
        return " ".join(shlex.split(line.split(";", 1)[1]))

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}")
    host = printed("demo", f"BUNDLE={bundle}", "SOURCE=clip.mp4", "THREADS=2", cwd=Path(__file__).parent.parent)
    assert f"-m edge run {bundle} --source=clip.mp4 --serve --threads=2 --headless ${{extra[@]}}" in host
    release = tmp_path / "release"
    release.mkdir()
    (release / "python").write_text("/usr/bin/python3\n")
    (release / "device.json").write_text(json.dumps({"camera": "picamera", "threads": 4}))
    device = printed("-f", str(Path(__file__).parent.parent / "deploy" / "device.mk"), "demo", cwd=release)
    assert device == "/usr/bin/python3 -m edge run bundle --source=picamera --serve --threads=4 --headless ${extra[@]}"


def test_the_thread_count_is_the_fewest_whose_p90_is_within_the_margin_of_the_best(tmp_path):
    from deploy.android import cluster_of
    from edge.threads import CHOSEN, choose, chosen, record

    choice = choose({"1": {"p90": 2.0}, "2": {"p90": 1.04}, "3": {"p90": 1.0}, "4": {"p90": 1.3}})
    assert (choice["threads"], choice["best_threads"]) == (2, 3) and "within 5% of the best (1.000 ms at 3)" in choice[
        "why"
    ]
    assert choose({"1": {"p90": 1.0}, "2": {"p90": 1.2}})["why"] == "the fastest p90 (1.000 ms)"
    assert choose({"2": {"p90": 1.0}, "1": {"p90": 1.0}})["threads"] == 1, "a tie goes to fewer threads"
    assert choose({}) is None and chosen(tmp_path) is None
    record(choice, tmp_path)
    assert chosen(tmp_path) == 2
    for junk in ("", "[1]", '{"threads": true}', '{"threads": 0}', '{"threads": "2"}', "\xff"):
        (tmp_path / CHOSEN).write_text(junk)
        assert chosen(tmp_path) is None, junk
    cores = {"big": {"cpus": "0-3", "max_mhz": 2400}, "little": {"cpus": "4-7", "max_mhz": 1800}}
    assert cluster_of(4, cores) == "on the big (0-3, 2400 MHz) cores"
    assert cluster_of(5, cores) == "on the big (0-3, 2400 MHz) and little (4-7, 1800 MHz) cores"


def test_a_phones_big_and_little_cores_are_told_apart_by_frequency_and_part():
    from deploy.android import cores

    phone = {
        "cores": [
            {"cpu": str(i), "cpu_part": "0xd0b" if i < 2 else "0xd05", "max_freq_khz": 2400000 if i < 2 else 1800000}
            for i in range(6)
        ]
    }
    assert cores(phone) == {
        "big": {"cpus": "0-1", "part": "0xd0b", "max_mhz": 2400},
        "little": {"cpus": "2-5", "part": "0xd05", "max_mhz": 1800},
    }
    pi = {"cores": [{"cpu": str(i), "cpu_part": "0xd0b", "max_freq_khz": None} for i in range(4)]}
    assert cores(pi) == {"all": {"cpus": "0-3", "part": "0xd0b", "max_mhz": None}}


@pytest.mark.parametrize(
    "output,says",
    [
        (
            "adb: error: failed to copy 'a' to 'b': remote couldn't create file: No space left on device",
            "is out of disk space",
        ),
        (
            "[ 10%] /data/x\r\nadb: error: failed to copy '/tmp/a' to '/data/a': couldn't read from device",
            "stopped answering",
        ),
        ("error: device '127.0.0.1:5555' not found", "is gone"),
        ("error: device offline", "went offline"),
    ],
)
def test_adbs_failures_are_explained_in_one_line(output, says):
    from deploy.transport.adb import explain_adb

    line = explain_adb(output, "the Android device X")
    assert says in line and "\n" not in line


@pytest.mark.parametrize(
    "output, devices",
    [
        ("List of devices attached\nemulator-5554\tdevice\n\n", {"emulator-5554": "device"}),
        (
            "List of devices attached\nemulator-5554\tdevice product:sdk_gphone64_arm64 model:sdk transport_id:1\n"
            "192.168.1.7:5555       unauthorized usb:1-1 transport_id:2\n",
            {"emulator-5554": "device", "192.168.1.7:5555": "unauthorized"},
        ),
        (
            "* daemon not running; starting now at tcp:5037\n* daemon started successfully\nList of devices attached\n",
            {},
        ),
        (
            "List of devices attached\nR58M\tno permissions (user in plugdev group); see [http://...]\n",
            {"R58M": "no permissions"},
        ),
    ],
)
def test_adb_devices_with_and_without_l_is_parsed(output, devices):
    assert parse_devices(output) == devices


@pytest.mark.parametrize(
    "output",
    [
        "List of devices attached\nemulator-5554\tsleeping\n",
        "List of devices attached\nemu\x1b[2J\tdevice\n",
        "List of devices attached\n\ufffd\ufffd\tdevice\n",
        "List of devices attached\njust-a-serial\n",
    ],
)
def test_adb_devices_rows_not_understood_are_refused_in_one_line(output):
    with pytest.raises(DeployError, match="adb devices printed a row this deploy does not understand") as error:
        parse_devices(output)
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)


def test_adb_output_is_read_bounded_and_any_bytes_decode(tmp_path):
    """A device may print anything: 300 MB of it keeps a megabyte per stream, bytes that are not UTF-8 decode."""
    script = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe ok\\n' + b'x' * (300 << 20)); sys.stderr.write('e')"
    result = run_bounded([sys.executable, "-c", script], timeout=120)
    assert result.returncode == 0 and len(result.stdout) <= MAX_OUTPUT and result.stdout.startswith("\ufffd\ufffd ok")
    assert result.stderr == "e"


class LocalShell:
    """A transport running argv here, as deploy's SSH and adb targets run it on a device."""

    where = "the test device"

    def run(self, argv, what=None, check=True):
        result = subprocess.run(argv, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise DeployError(f"{what} failed")
        return result


def test_one_deploy_at_a_time_per_device_and_a_stale_lock_is_taken_over(tmp_path):
    """Two deploys would remove each other's unfinished release and race to switch current."""
    from deploy.release import LOCK_STALE_S, device_lock

    root, shell = str(tmp_path / "mobilenet-edge"), LocalShell()
    with device_lock(shell, root):
        with pytest.raises(DeployError, match="another deploy to the test device is under way .* s old"):
            with device_lock(shell, root):
                pass
    assert not (tmp_path / "mobilenet-edge" / ".deploy.lock").exists(), "released"
    with pytest.raises(RuntimeError, match="the deploy failed"), device_lock(shell, root):
        raise RuntimeError("the deploy failed")
    assert not (tmp_path / "mobilenet-edge" / ".deploy.lock").exists(), "released when the deploy fails too"
    lock = tmp_path / "mobilenet-edge" / ".deploy.lock"
    lock.mkdir()
    (lock / "owner").write_text("another-machine 1\n")
    old = time.time() - LOCK_STALE_S - 60
    os.utime(lock, (old, old))  # left by a deploy from elsewhere, killed hours ago
    with device_lock(shell, root):
        assert lock.is_dir() and lock.stat().st_mtime > old
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    lock.mkdir()
    (lock / "owner").write_text(f"{socket.gethostname()} {ended.pid}\n")  # a deploy here whose device vanished
    with device_lock(shell, root):
        assert (lock / "owner").read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert not lock.exists()
    lock.mkdir()  # cut short between making the lock and naming its owner, two minutes ago
    os.utime(lock, (time.time() - 120, time.time() - 120))
    with device_lock(shell, root):
        assert (lock / "owner").is_file()
    shell.run(["mv", root, f"{root}.moved"])
    Path(root).write_text("a file where the release root should be")  # mkdir fails, and no lock is there
    with pytest.raises(DeployError, match="creating .*mobilenet-edge failed"):
        with device_lock(shell, root):
            pass

    class FullDisk(LocalShell):
        def run(self, argv, what=None, check=True):
            if argv[0] == "mkdir" and argv[-1].endswith(".deploy.lock"):
                return subprocess.CompletedProcess(
                    argv, 1, "", "mkdir: cannot create directory: No space left on device"
                )
            return super().run(argv, what, check)

    with pytest.raises(DeployError, match="cannot create .*deploy.lock on the test device: .*disk space"):
        with device_lock(FullDisk(), str(tmp_path / "other")):
            pass


@pytest.mark.parametrize(
    "content",
    [
        b"[1, 2]",
        b"\xff\xfe\x00garbage",
        b"{}",
        b'{"figures": {}}' + b"x",
        b"[" * 100000,
        b'{"figures": {"a": 1}, "device": 3, "versions": [1]}',
    ],
)
def test_device_report_compare_says_what_is_wrong_in_one_line(tmp_path, content):
    (tmp_path / "a.json").write_bytes(content)
    good = tmp_path / "b.json"
    good.write_text(json.dumps({"figures": {"latency": {"1": {"p50": 2.0}}}}))
    result = run_module("-m", "device_tests.compare", str(tmp_path / "a.json"), str(good), text=True)
    if content.endswith(b'"versions": [1]}'):
        assert result.returncode == 0 and "| latency.1.p50 | - | 2.0 | - |" in result.stdout, result.stderr
    else:
        one_error_line(result)

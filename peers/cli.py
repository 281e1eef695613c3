"""Our int8 and fp32 programs against LiteRT, ONNX Runtime and ncnn on the same weights: one table.

    python -m peers [--checkpoint CKPT | --model v3_small --width 1.0 --res 224 --classes 1000]
                    [--data DIR] [--threads 2] [--alone] [--device rpi5-emu]

Converts one float model to every runtime (``peers.convert``), checks each program's top-1 against the
eager model on the same images, times them all in one process, taking turns (``peers.timing``), or with
``--alone`` each in a process of its own, the processes taking turns, and prints the table with p50, p90
and p99, the commit and the machine; ``--device`` measures the same folder on a device too and prints the
ratios there. Writes ``report.json`` (every sample), ``report.md`` and ``latency.png`` (ours and LiteRT's
distributions) beside the programs (``--out``).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from edge.command import positive_int, with_examples

from . import pictures
from .measure import PROGRAMS, TurnTaker, command, with_agreement
from .runtimes import PeerError
from .timing import Plan, summary, take_turns

CHECK_IMAGES = 64  # top-1 agreement on these; the first half also calibrates every int8 program


def say(line: str) -> None:
    print(f"== peers: {line}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peers",
        description=__doc__.splitlines()[0],
        **with_examples(
            "python -m peers",
            "python -m peers --checkpoint runs/v3_small/checkpoints/best.ckpt --data cifar10-jpegs/",
            "python -m peers --reuse --device rpi5-emu",
        ),
    )
    model = parser.add_argument_group("the model (default: seeded V3-Small weights, 224 px, 1000 classes)")
    model.add_argument("--checkpoint", type=Path, help="a float checkpoint (make train, or make qat's float run)")
    model.add_argument("--model", default="v3_small", help="architecture of the seeded weights")
    model.add_argument("--width", type=float, default=1.0, help="width multiplier α")
    model.add_argument("--res", type=positive_int, default=224, help="input resolution ρ")
    model.add_argument("--classes", type=positive_int, default=1000, help="classes of the seeded model")
    model.add_argument("--seed", type=int, default=0, help="seed of the weights and the images")
    parser.add_argument("--data", type=Path, help="a folder of images (default: the procedural shapes)")
    parser.add_argument("--threads", type=positive_int, default=2, help="threads for every runtime")
    parser.add_argument("--rounds", type=positive_int, default=Plan.rounds, help="turns per program")
    parser.add_argument("--calls", type=positive_int, default=Plan.calls, help="timed calls per turn")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="time each program in a process of its own, the processes taking turns (default: all in one process)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/peers"),
        help="folder for the programs and the report",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure the programs already in --out, converting nothing"
    )
    parser.add_argument("--device", help="also measure on this device profile (configs/devices), e.g. rpi5-emu")
    parser.add_argument("--host", help="the device's user@host, overriding its profile")
    parser.add_argument(
        "--device-rounds",
        type=positive_int,
        default=8,
        help="turns per program on the device (fewer than here: emulated time is slow)",
    )
    return parser


def describe_source(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return f"the float checkpoint {args.checkpoint}"
    return f"seeded {args.model} weights (seed {args.seed}), α {args.width:g}, {args.res} px, {args.classes} classes"


def float_model(args: argparse.Namespace):
    """The float model and its input spec: a checkpoint's, or seeded weights at the given shape."""
    import torch

    from edge.preprocess import InputSpec
    from training.models import create_model

    if args.checkpoint:
        from training.qat import QATClassifier
        from training.restore import load_module

        module, checkpoint = load_module(args.checkpoint)
        if isinstance(module, QATClassifier):
            raise ValueError(f"{args.checkpoint} is a QAT checkpoint: give the float one it started from")
        return module.model.eval(), InputSpec(**checkpoint["data"]["input"])
    torch.manual_seed(args.seed)
    return create_model(args.model, args.classes, args.width).eval(), InputSpec.for_resolution(args.res)


def convert(args: argparse.Namespace, out: Path) -> None:
    from training.quiet import silence_known_noise

    from .convert import convert_all, folder_images, procedural_images

    silence_known_noise()

    model, spec = float_model(args)
    say(f"images: {CHECK_IMAGES} from {args.data or 'the procedural shapes'}, {spec.size} px")
    images = (
        folder_images(spec, args.data, CHECK_IMAGES) if args.data else procedural_images(spec, CHECK_IMAGES, args.seed)
    )
    convert_all(model, images, CHECK_IMAGES // 2, spec.size, out, say)


def fmt(value: float | None, pattern: str = "{:.1%}") -> str:
    return "" if value is None else pattern.format(value)


def table(result: dict) -> str:
    rows = result["programs"]
    ours = next(r for r in rows if r["ours"] and r["precision"] == "int8")
    lines = [
        "| program | runtime | p50 ms | p90 ms | p99 ms | vs ours int8 (p50) | size MB | top-1 = eager "
        "| parity with eager | top-1 = ours int8 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name, eager = f"**{r['name']}**" if r["ours"] else r["name"], r["vs_eager"]
        lines.append(
            f"| {name} | {r['runtime_label']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['p50_ms'] / ours['p50_ms']:.2f}x | {r['bytes'] / 1e6:.2f} | {fmt(eager['top1_agreement'])} | "
            f"{fmt(eager['agreement'])} | {fmt(r['top1_vs_ours_int8'])} |"
        )
    return "\n".join(lines)


def ratios(host: dict, device: dict) -> str:
    """Each program's p50 over ours int8's, here and there: under emulation only these ratios mean anything."""

    def by_name(result):
        ours = next(r for r in result["programs"] if r["ours"] and r["precision"] == "int8")["p50_ms"]
        return {r["name"]: r["p50_ms"] / ours for r in result["programs"]}

    here, there = by_name(host), by_name(device)
    lines = [
        "| program | host, vs ours int8 | device, vs ours int8 | device p50 ms | top-1 = eager there |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in device["programs"]:
        lines.append(
            f"| {r['name']} | {here[r['name']]:.2f}x | {there[r['name']]:.2f}x | {r['p50_ms']:.2f} | "
            f"{fmt(r['vs_eager']['top1_agreement'])} |"
        )
    return "\n".join(lines)


def check_fp32(result: dict) -> list[str]:
    """Every fp32 program must give the eager model's top-1 on every image, a near-tie within the bundle's
    fp32 tolerance (``edge.parity``) counting as the same answer. Their logits may stray further than that
    tolerance (ncnn's Winograd convolutions do): the table shows it, it is not an error."""
    return [
        f"{r['name']}: its top-1 is eager's on {r['vs_eager']['top1_agreement_within_tolerance']:.1%} of the images "
        f"(largest logit difference {r['vs_eager']['max_abs_logit_diff']:.2g})"
        for r in result["programs"]
        if r["precision"] == "fp32" and r["vs_eager"]["top1_agreement_within_tolerance"] < 1.0
    ]


def device_of(args: argparse.Namespace):
    """The device profile to measure on too (None: this machine only), checked before any work."""
    if not args.device:
        return None
    from deploy.profile import load_device

    device = load_device(args.device, host=args.host)
    if device.adb:
        raise PeerError(f"{device.name} is reached over adb: the peers benchmark measures on SSH devices (a Pi)")
    return device


MARK = ".peers"  # in every folder this command converts into


def ours(folder: Path) -> bool:
    """Whether ``folder`` is one this command converted into (or began to): it may write over it."""
    return (folder / MARK).is_file() or (folder / "programs.json").is_file()


def run(args: argparse.Namespace) -> int:
    out, device = args.out, device_of(args)
    if args.reuse:
        if not (out / "programs.json").is_file():
            raise PeerError(f"nothing to reuse in {out}: run without --reuse first")
    else:
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours(out))):
            raise PeerError(f"{out} exists and is not a folder of this benchmark: give another --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / MARK).touch()  # first: a conversion cut short leaves a folder the next run still knows as its own
        for stale in ("programs.json", "source.json"):  # written last: a folder half converted is never measured
            (out / stale).unlink(missing_ok=True)
        started = time.monotonic()
        convert(args, out)
        (out / "source.json").write_text(json.dumps({"model": describe_source(args)}) + "\n")
        say(f"converted in {time.monotonic() - started:.0f} s into {out}")
    source = json.loads((out / "source.json").read_text())["model"] if (out / "source.json").is_file() else "?"
    plan = Plan(args.rounds, args.calls)
    report = {
        "host": measure_alone(out, args.threads, plan) if args.alone else measure_here(out, args.threads, plan),
        "model": source,
        "mode": "alone" if args.alone else "taking turns",
        "commit": commit(),
        "cpu": cpu_model(),
    }
    how = "each program alone in its own process, taking turns" if args.alone else "all in one process, taking turns"
    text = [
        f"{source}; {report['cpu']}, {args.threads} threads, {how}, {report['host']['images']} images; "
        f"commit {report['commit']}:",
        "",
        table(report["host"]),
    ]
    if args.alone:
        text += ["", f"p50 of each of its {ALONE_PROCESSES} processes:", *process_lines(report["host"])]
    if device:
        report["device"] = measure_on_device(device, out, args)
        emulated = " (emulated: only the ratios between runtimes mean anything)" if device.emulated else ""
        text += ["", f"{device.name}{emulated}, {args.threads} threads:", "", ratios(report["host"], report["device"])]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    picture = pictures.draw(report["host"], text[0].rstrip(":"), out / pictures.PICTURE)
    if picture:
        text += ["", f"![latency distributions, ours and LiteRT]({picture.name})"]
    (out / "report.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    failures = check_fp32(report["host"]) + check_fp32(report.get("device", {"programs": []}))
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


def measure_here(out: Path, threads: int, plan: Plan) -> dict:
    """In a fresh process, as on a device: the converters' threads and memory are gone, torch is not loaded."""
    result = subprocess.run(command(sys.executable, str(out), threads, plan), stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise PeerError("measuring on this machine failed (its error is above)")
    return json.loads(result.stdout.strip().splitlines()[-1])


ALONE_PROCESSES = 3  # processes per program with --alone: one process can settle in a slow mode for its life


def measure_alone(out: Path, threads: int, plan: Plan) -> dict:
    """Each program in processes of its own, ALONE_PROCESSES in a row, the rounds split among them: no other
    runtime's threads or memory in a program's process, so nothing of sharing one colours its figures.

    The processes of a generation (one per program) are all started, then take turns as in one process:
    this process hands out the turns, and the others wait on their pipes, idle. So a drift of the machine
    (a virtual machine's cores running at another speed for minutes) falls on every program alike, not on
    whichever ran then. A process can also settle in a fast or a slow mode for its whole life, so each
    program's samples pool its processes, and its row gives each process's p50 too."""
    names = [p["name"] for p in json.loads((out / PROGRAMS).read_text())]
    each = Plan(-(-plan.rounds // ALONE_PROCESSES), plan.calls, plan.settle_s)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for generation in range(ALONE_PROCESSES):
        say(f"alone: {len(names)} processes, {each.rounds} turns each ({generation + 1} of {ALONE_PROCESSES})")
        takers: dict[str, TurnTaker] = {}
        try:
            for name in names:
                takers[name] = TurnTaker(sys.executable, out, threads, each, name)
            take_turns({name: taker.turn for name, taker in takers.items()}, each.rounds, seed=generation)
            for name in names:
                results[name].append(takers[name].finish())
        finally:
            for taker in takers.values():
                taker.stop()
    rows = []
    for name in names:
        processes = [result["programs"][0] for result in results[name]]
        pooled = [s for row in processes for s in row["samples_ms"]]
        rows.append(processes[0] | summary(pooled) | {"process_p50_ms": [row["p50_ms"] for row in processes]})
    return results[names[0]][0] | {"plan": asdict(plan), "programs": with_agreement(rows)}


def process_lines(result: dict) -> list[str]:
    """With --alone: each program's p50 in each of its processes, so a process in a slow mode shows."""
    return [
        f"- {r['name']}: " + ", ".join(f"{ms:.3f}" for ms in r["process_p50_ms"]) + " ms"
        for r in result["programs"]
        if r.get("process_p50_ms")
    ]


def commit() -> str:
    """The commit measured (``+ changes`` when the tree differs from it), or "unknown" outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    found = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if found.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return found.stdout.strip() + (" + changes" if dirty.stdout.strip() else "")


def cpu_model(info: str | None = None) -> str:
    """The CPU as /proc/cpuinfo names it, with its x86 family and model, and the cores this process may use.

    A virtual machine's name can be as vague as "AMD EPYC", which several generations share; the family and
    model tell them apart (AMD's 25 is Zen 3 and 4, 26 is Zen 5), so two reports say whether they compare."""
    if info is None:
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def measure_on_device(device, out: Path, args: argparse.Namespace) -> dict:
    from .remote import measure_on

    return measure_on(device, out, args.threads, Plan(args.device_rounds, args.calls), say)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # LiteRT's converter logs every pass otherwise
    args = build_parser().parse_args(argv)
    try:
        sys.exit(run(args))
    except ValueError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")

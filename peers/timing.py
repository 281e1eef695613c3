"""Time several runtimes taking turns, so that drift of the machine hits all of them alike: in one
process (``alternate``), or each in a process of its own whose turns the parent hands out (``take_turns``).

Each round gives every runtime one turn, in a seeded random order drawn afresh each round: untimed
calls for ``settle_s`` seconds, then ``calls`` timed ones. The untimed calls matter: after a call a
runtime's worker threads spin before they sleep (ncnn's OpenMP threads and ONNX Runtime's int8 pool for
up to 100 ms on a 2-core x86, XNNPACK's for less), and on a machine with as many cores as threads the
next runtime competes with them for the cores. Meanwhile the untimed calls wake the next runtime's own
threads and bring its weights back into the caches. An idle pause instead would let the cores drop into
power saving (or a virtual machine's cores be descheduled), and the first calls after it run slow. The
order changes so that what spin outlasts the settling falls on every runtime alike: with the order
merely rotated, each runtime would nearly always follow the same one.
"""

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    rounds: int = 60
    calls: int = 10  # timed calls per turn
    settle_s: float = 0.1  # untimed calls for this long at the start of each turn (at least one)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.calls < 1 or not 0 <= self.settle_s <= 10:
            raise ValueError(f"rounds and calls must be 1 or more and settle 0 or more, got {self}")


def turns(names: list[str], rounds: int, seed: int = 0) -> Iterator[str]:
    """Every name once per round, in an order drawn afresh each round from ``seed``: each name follows
    every other about equally often, and the same seed gives the same order."""
    draw = random.Random(seed)
    for _ in range(rounds):
        yield from draw.sample(names, len(names))


def take_turns(
    takers: dict[str, Callable[[], object]],
    rounds: int,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Call each taker once per round, in the order ``turns`` draws; ``progress(done, total)`` after each."""
    total = rounds * len(takers)
    for done, name in enumerate(turns(list(takers), rounds, seed), 1):
        takers[name]()
        if progress is not None:
            progress(done, total)


def turn(call: Callable[[], object], plan: Plan, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """One turn of ``call``: untimed calls for ``plan.settle_s`` (at least one), then milliseconds of each
    of ``plan.calls`` timed ones."""
    settled = clock() + plan.settle_s
    call()
    while clock() < settled:
        call()
    samples = []
    for _ in range(plan.calls):
        start = clock()
        call()
        samples.append(1000 * (clock() - start))
    return samples


def alternate(
    calls: dict[str, Callable[[], object]],
    plan: Plan,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per timed call, per name, ``plan.rounds * plan.calls`` each: the calls taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    take_turns(
        {name: lambda name=name: samples[name].extend(turn(calls[name], plan, clock)) for name in calls},
        plan.rounds,
        progress=progress,
    )
    return samples


def summary(ms: list[float]) -> dict:
    """p50, p90 and p99, and every sample kept: the tail is what a live app feels, and a percentile hides its
    shape (docs/benchmarks.md draws the samples)."""
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "runs": len(ms),
        "samples_ms": [round(float(s), 5) for s in ms],
    }

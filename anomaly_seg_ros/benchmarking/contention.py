"""Latency when other processes compete for the CPU (``anomaly-seg benchmark --contention N``).

A vehicle computer runs a ROS graph beside the network and a validation box runs several jobs
at once, so the forward shares the cores. This module starts ``N`` CPU-bound neighbour
processes itself and samples the forward alternately without and with them, in the same run:
the neighbours are paused (SIGSTOP) for an idle sample and resumed (SIGCONT) for a contended
one, so both sets of samples see the same background load of the machine and their ratio is
the effect of the ``N`` neighbours alone.

Target (issue 14): a fair share of the CPU and no collapse, i.e. contended p50 <=
``(N + threads) / threads`` x idle p50, where ``threads`` is the forward's intra-op threads.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

#: A neighbour: a pure-Python busy loop, one core's worth of CPU demand, no memory traffic.
BUSY_LOOP = "while True:\n    pass\n"
#: Time a resumed neighbour gets to be scheduled before the contended sample starts.
SETTLE_S = 0.05


class Neighbours:
    """``count`` CPU-bound processes that can be paused and resumed; see :func:`busy_neighbours`."""

    def __init__(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        self.processes = list(processes)

    def pause(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGCONT)
        if self.processes:
            time.sleep(SETTLE_S)


@contextlib.contextmanager
def busy_neighbours(count: int) -> Iterator[Neighbours]:
    """Start ``count`` busy processes, paused; they are killed on exit, whatever happens."""
    if count < 0:
        raise ValueError(f"neighbours: expected a count >= 0, got {count}")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        neighbours = Neighbours(processes)
        neighbours.pause()
        yield neighbours
    finally:
        for process in processes:
            process.kill()
            process.send_signal(signal.SIGCONT)  # a stopped process dies only once continued on some kernels
        for process in processes:
            process.wait()


def fair_share_factor(neighbours: int, threads: int) -> float:
    """Largest contended/idle p50 that is still a fair share: ``(N + threads) / threads``."""
    return (neighbours + threads) / threads


def _stats(samples: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def contention_report(idle: Sequence[float], contended: Sequence[float], *, neighbours: int, threads: int) -> dict:
    """p50/p99 idle and contended, their ratios and the fair-share target."""
    idle_stats, busy_stats = _stats(idle), _stats(contended)
    target = fair_share_factor(neighbours, threads)
    p50_ratio = busy_stats["p50"] / idle_stats["p50"]
    return {
        "neighbours": neighbours,
        "threads": threads,
        "idle_ms": idle_stats,
        "contended_ms": busy_stats,
        "p50_ratio": p50_ratio,
        "p99_ratio": busy_stats["p99"] / idle_stats["p99"],
        "target_p50_ratio": target,
        "meets_target": bool(p50_ratio <= target),
    }


def measure_contention(
    fn: Callable[[], Any], *, neighbours: int, threads: int, iterations: int, warmup: int = 1
) -> dict[str, Any]:
    """Time ``fn`` alternately with ``neighbours`` busy processes paused and running."""
    idle: list[float] = []
    contended: list[float] = []
    with busy_neighbours(neighbours) as crowd:
        for index in range(warmup + iterations):
            for running, samples in ((False, idle), (True, contended)):
                if running:
                    crowd.resume()
                start = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - start) * 1000.0
                if running:
                    crowd.pause()
                if index >= warmup:
                    samples.append(elapsed)
    report = contention_report(idle, contended, neighbours=neighbours, threads=threads)
    report["iterations"] = iterations
    return report


def contention_markdown(report: dict[str, Any], label: str) -> list[str]:
    """One table row per report: ``| label | threads | idle p50/p99 | contended p50/p99 | ratios | target | met |``."""
    idle, busy = report["idle_ms"], report["contended_ms"]
    met = "yes" if report["meets_target"] else "**no**"
    return [
        f"| {label} | {report['threads']} | {idle['p50']:.1f} / {idle['p99']:.1f} | {busy['p50']:.1f} / "
        f"{busy['p99']:.1f} | {report['p50_ratio']:.2f} / {report['p99_ratio']:.2f} | "
        f"≤ {report['target_p50_ratio']:.2f} | {met} |"
    ]


CONTENTION_HEADER = [
    "| forward | threads | idle p50 / p99 ms | contended p50 / p99 ms | ÷ idle p50 / p99 | target p50 | met |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
]

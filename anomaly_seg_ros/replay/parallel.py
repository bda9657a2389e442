"""Bag replay at scale: one task per bag in parallel processes (``--workers N``) or on a Ray
cluster (``--ray ADDRESS``), merged by the driver into the report the serial run writes.

The shape of Ray's batch-inference examples: the unit of work is a bag; a task gets plain
values (bag path, output path, config path and overrides, :class:`ReplayOptions`), builds its
own :class:`~anomaly_seg_ros.core.perception.Perception` from the config and the checkpoint
path (the model is never pickled), writes its output bag and a per-bag summary beside it
(``<output bag>.summary.json``), and returns a :class:`BagResult`: the bag's
:class:`~anomaly_seg_ros.replay.records.ReplayReport` and its pooled accumulators. Nothing is
shared between tasks. The driver merges the accumulators in bag order, the order in which
:func:`~anomaly_seg_ros.replay.runner.replay_bags` merges its per-bag ones, so the counts and
pooled metrics equal the serial run's exactly (only measured times differ).

A bag that fails in a worker (an unreadable recording, an output that cannot be written, a
worker process that dies) becomes a failure entry of the report; the other bags go on.
Paths must be visible to every worker: on a cluster, bags, checkpoint and ``--out`` live on
shared storage (README, "Replay at scale").
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.common.fileio import json_default
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.metrics import StreamingOODMetrics
from anomaly_seg_ros.metrics.components import ComponentMetrics
from anomaly_seg_ros.replay.records import ReplayReport
from anomaly_seg_ros.replay.runner import (
    PooledMetrics,
    ReplayOptions,
    find_topics,
    new_pooled_metrics,
    replay_bag,
)

log = logging.getLogger(__name__)

#: The Ray release the ``ray`` extra pins (setup.py); the driver and every node need the same one.
RAY_REQUIREMENT = "ray==2.60.0"


@dataclass(frozen=True)
class ReplayJob:
    """One bag's work, in plain values: what a worker process or a Ray task receives."""

    bag: str
    out: str
    config_path: str | None
    overrides: tuple[str, ...]
    options: ReplayOptions


@dataclass
class BagResult:
    """What a task returns: the bag's report and pooled accumulators, or why it failed."""

    bag: str
    out: str
    report: ReplayReport | None = None
    pooled: PooledMetrics | None = None
    error: str | None = None

    def failure(self) -> dict[str, str]:
        return {"bag": self.bag, "output": self.out, "error": self.error or ""}


@dataclass
class ParallelReplay:
    """Reports of the bags that were replayed (bag order), their merged accumulators, the failures."""

    reports: list[ReplayReport]
    pooled: PooledMetrics | None
    failures: list[dict[str, str]] = field(default_factory=list)


def summary_path(out: str | Path) -> Path:
    """Where a task writes its bag's summary: beside the output bag, ``<output bag>.summary.json``."""
    return Path(f"{Path(out)}.summary.json")


@functools.lru_cache(maxsize=1)
def _perception(config_path: str | None, overrides: tuple[str, ...]) -> Perception:
    """One pipeline per worker process, built from the config (kept across the bags it replays, as the
    serial run keeps one; ``replay_bag`` resets its state per bag)."""
    return Perception.from_config(load_config(config_path, list(overrides)))


def replay_job(job: ReplayJob) -> BagResult:
    """Replay one bag into its output bag and summary; never raises for a bad bag (it is reported)."""
    try:
        perception = _perception(job.config_path, job.overrides)
        pooled = new_pooled_metrics(perception, job.options)
        report = replay_bag(job.bag, job.out, perception, job.options, pooled=pooled)
        summary = report.summary() | {"frame_rows": [record.row() for record in report.frame_records]}
        summary_path(job.out).write_text(json.dumps(summary, indent=1, default=json_default) + "\n")
    except Exception as error:  # one bad bag must not stop the others: it is reported by the driver
        log.exception("replay of %s failed", job.bag)
        return BagResult(job.bag, job.out, error=f"{type(error).__name__}: {error}")
    return BagResult(job.bag, job.out, report, pooled)


def make_jobs(
    pairs: Sequence[tuple[Path, Path]],
    config_path: str | Path | None,
    overrides: Sequence[str],
    options: ReplayOptions,
) -> list[ReplayJob]:
    """Jobs with absolute paths (a worker's working directory is not the driver's), checked on the
    driver first: the config loads, the checkpoint exists and every bag has its topics, so a
    mistake stops the run before a single task starts."""
    config = load_config(config_path, list(overrides))
    weights = Path(config.model.weights) if config.model.weights else None
    if weights is None:
        raise ConfigError("model.weights: a checkpoint path is required (train one with `anomaly-seg train`)")
    if not weights.is_file():
        raise ConfigError(f"model.weights: checkpoint {weights} does not exist")
    overrides = (*overrides, f"model.weights={weights.resolve()}")
    config_path = str(Path(config_path).resolve()) if config_path is not None else None
    for bag, _ in pairs:
        find_topics(bag, options)
    return [ReplayJob(str(bag.resolve()), str(out.resolve()), config_path, overrides, options) for bag, out in pairs]


def replay_parallel(
    jobs: Sequence[ReplayJob],
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    cpus_per_task: float = 1.0,
    progress: bool = False,
) -> ParallelReplay:
    """Run ``jobs`` on ``workers`` local processes or, with ``ray_address``, as Ray tasks; merge the results."""
    if (workers is None) == (ray_address is None):
        raise ValueError("give either workers (local processes) or ray_address (a Ray cluster)")
    if ray_address is not None:
        results = _ray_results(jobs, ray_address, cpus_per_task)
    else:
        if workers < 1:
            raise ValueError(f"workers: expected a number of processes >= 1, got {workers}")
        results = _process_results(jobs, workers)
    try:
        return merge_results(_progress(results, len(jobs), progress))
    finally:
        results.close()  # stops the pool or disconnects from Ray now, also when merging failed


def merge_results(results: Iterator[BagResult] | Sequence[BagResult]) -> ParallelReplay:
    """Reports in bag order and their accumulators merged in that order; failures listed."""
    merged = ParallelReplay([], None)
    for result in results:
        if result.error is not None or result.report is None or result.pooled is None:
            merged.failures.append(result.failure())
            continue
        merged.reports.append(result.report)
        if merged.pooled is None:  # merged into, never a task's own (Ray hands out read-only arrays)
            merged.pooled = _empty_like(result.pooled)
        merged.pooled.merge(result.pooled)
    return merged


def _empty_like(pooled: PooledMetrics) -> PooledMetrics:
    """Empty accumulators with the settings of ``pooled`` (what ``new_pooled_metrics`` gave the tasks)."""
    pixels, components = pooled.pixels, pooled.components
    return PooledMetrics(
        StreamingOODMetrics(
            pixels.num_bins,
            buffer_size=pixels.buffer_size,
            margin=pixels.margin,
            histogram_range=pixels.histogram_range,
        ),
        None
        if components is None
        else ComponentMetrics(
            components.threshold,
            components.track,
            min_gt_size=components.min_gt_size,
            min_pred_size=components.min_pred_size,
            siou_thresholds=components.siou_thresholds,
        ),
    )


def _progress(results: Iterator[BagResult], total: int, enabled: bool) -> Iterator[BagResult]:
    from tqdm import tqdm

    with tqdm(total=total, desc="bags", unit="bag", disable=not enabled) as bar:
        for result in results:
            bar.update(1)
            if result.error is not None:
                log.warning("bag %s failed: %s", result.bag, result.error)
            yield result


# -- local processes -----------------------------------------------------------------------------


def _init_worker(threads: int) -> None:
    """Share the CPUs among the workers (``model.threads`` in the config still overrides it)."""
    import torch

    torch.set_num_threads(threads)


def _process_results(
    jobs: Sequence[ReplayJob], workers: int, task: Callable[[ReplayJob], BagResult] = replay_job
) -> Iterator[BagResult]:
    """Results in bag order from a pool of spawned processes (fork after torch has started threads can hang).

    A worker that dies (killed, out of memory) breaks the whole pool in ``concurrent.futures``;
    its bags that had started (their output exists) are reported as failed and the others
    are given to a new pool, once.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    done: dict[int, BagResult] = {}
    next_index = 0
    pending = list(range(len(jobs)))
    for attempt in (1, 2):
        if not pending:
            break
        retry: list[int] = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pending)),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = {index: pool.submit(task, jobs[index]) for index in pending}
            for index, future in futures.items():
                try:
                    done[index] = future.result()
                except BrokenProcessPool as error:
                    job = jobs[index]
                    if attempt == 2 or Path(job.out).exists():
                        done[index] = BagResult(job.bag, job.out, error=f"worker process died: {error}")
                    else:
                        retry.append(index)
                while next_index in done:
                    yield done.pop(next_index)
                    next_index += 1
        pending = retry


# -- Ray -------------------------------------------------------------------------------------


def _ray_results(jobs: Sequence[ReplayJob], address: str, cpus_per_task: float) -> Iterator[BagResult]:
    """One Ray task per bag on the cluster at ``address``; results fetched in bag order."""
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError as error:
        raise ConfigError(
            f"--ray needs Ray on this machine and every node: pip install 'anomaly_seg_ros[ray]' ({RAY_REQUIREMENT})"
        ) from error
    connected_here = not ray.is_initialized()
    if connected_here:
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        # no retries: a retried task would find its half-written output bag and fail for that reason
        task = ray.remote(num_cpus=cpus_per_task, max_retries=0)(replay_job)
        refs = [task.remote(job) for job in jobs]
        for job, ref in zip(jobs, refs, strict=True):
            yield _ray_get(ray.get, ref, job, RayError)
    finally:
        if connected_here:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address where no cluster listens (``ray.init`` retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return  # Ray resolves (or refuses) these itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise ConfigError(
            f"--ray {address}: nothing answers at {host}:{port} ({error}); expected the address of a running "
            "Ray head (`ray start --head` prints it) or auto"
        ) from error


def _ray_get(get: Callable, ref: object, job: ReplayJob, errors: type[Exception]) -> BagResult:
    try:
        return get(ref)
    except errors as error:  # the task's worker or node died: this bag failed, the others go on
        return BagResult(job.bag, job.out, error=f"Ray task failed: {type(error).__name__}: {error}")

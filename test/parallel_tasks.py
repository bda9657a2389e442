"""Tasks for the worker-pool tests of test_parallel_replay.py, in a module of their own so that a spawned
worker process imports only this (not the test module with its test-only imports)."""

import os
from pathlib import Path

from anomaly_seg_ros.replay.parallel import BagResult, ReplayJob


def die_on_bag_named_die(job: ReplayJob) -> BagResult:
    """Dies (as on a segfault or the OOM killer) on the bag named "die", after starting its output;
    the other bags finish."""
    Path(job.out).mkdir()
    if Path(job.bag).name == "die":
        os._exit(3)
    return BagResult(job.bag, job.out, error="finished")

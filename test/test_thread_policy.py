"""Thread policy: OpenMP wait policy set before torch loads, thread defaults, the contention benchmark."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly_seg_ros.benchmarking.contention import busy_neighbours, contention_report, fair_share_factor
from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.inference.threads import (
    apply_wait_policy,
    available_cores,
    default_threads,
    spinning_allowed,
    wait_policy,
)

ROOT = Path(__file__).resolve().parents[1]


def test_wait_policy_defaults_to_passive_and_the_environment_overrides_it():
    environ: dict[str, str] = {}
    assert apply_wait_policy(environ) == "PASSIVE" and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert not spinning_allowed(environ)
    active = {"OMP_WAIT_POLICY": "active"}
    assert apply_wait_policy(active) == "ACTIVE" and active == {"OMP_WAIT_POLICY": "active"}
    assert spinning_allowed(active) and wait_policy({}) == "ACTIVE"  # unset: GNU OpenMP spins
    with pytest.raises(ConfigError, match="OMP_WAIT_POLICY: expected one of ACTIVE, PASSIVE, got 'SPIN'"):
        apply_wait_policy({"OMP_WAIT_POLICY": "spin"})


def test_default_threads_follow_omp_num_threads_else_every_available_core():
    assert default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert default_threads({}) == available_cores() == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS: expected a positive integer"):
        default_threads({"OMP_NUM_THREADS": "many"})


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_sets_the_wait_policy_before_torch_is_loaded():
    # The CLI's subcommands import torch; the policy must be in the environment before that.
    probe = (
        "import json, os, sys\n"
        "from anomaly_seg_ros.tools import cli\n"
        "def probe():\n"
        "    print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules]))\n"
        "    sys.exit(0)\n"
        "cli.build_parser = probe\n"
        "cli.main([])\n"
    )
    for preset, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = _clean_env()
        if preset:
            env["OMP_WAIT_POLICY"] = preset
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert json.loads(result.stdout) == [expected, False]


def test_contention_report_against_hand_worked_figures():
    assert fair_share_factor(2, 2) == 2.0 and fair_share_factor(2, 1) == 3.0
    report = contention_report([10.0, 12.0, 14.0], [20.0, 30.0, 40.0], neighbours=2, threads=2)
    assert report["idle_ms"]["p50"] == 12.0 and report["contended_ms"]["p50"] == 30.0
    assert report["p50_ratio"] == 2.5 and report["target_p50_ratio"] == 2.0 and not report["meets_target"]
    assert report["contended_ms"]["p99"] == pytest.approx(39.8) and report["idle_ms"]["p99"] == pytest.approx(13.96)
    assert contention_report([10.0], [29.0], neighbours=2, threads=1)["meets_target"]


def _state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ..."
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _settled_state(pid: int, wanted: str) -> str:
    """The process state once it shows ``wanted`` (signals arrive asynchronously), or after 2 s."""
    deadline = time.monotonic() + 2.0
    while (state := _state(pid)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return state


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_neighbours_are_busy_only_while_resumed_and_are_killed_on_exit():
    with busy_neighbours(2) as crowd:
        pids = [process.pid for process in crowd.processes]
        assert [_settled_state(pid, "T") for pid in pids] == ["T", "T"]  # started paused
        before = [_cpu_ticks(pid) for pid in pids]
        time.sleep(0.2)
        assert [_cpu_ticks(pid) for pid in pids] == before  # paused: no CPU time
        crowd.resume()
        time.sleep(0.3)
        assert all(_settled_state(pid, "RS") in "RS" for pid in pids)
        assert all(after > start for after, start in zip([_cpu_ticks(pid) for pid in pids], before, strict=True))
        crowd.pause()
        assert [_settled_state(pid, "T") for pid in pids] == ["T", "T"]
    assert all(process.poll() is not None for process in crowd.processes)


def test_the_node_package_sets_the_wait_policy_before_its_modules_load_torch():
    # ros/node.py imports torch at module level; the ros package (imported first) sets the policy.
    probe = (
        "import json, os, sys\n"
        "import anomaly_seg_ros.ros\n"
        "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=_clean_env(), capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == ["PASSIVE", False]

"""Static checks: ruff over the package, the launch files and the tests (the node and launch
files cannot run here, so this and py_compile in test_launch are their first line of defence)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e .[test] installs it)")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "anomaly_seg_ros", "launch", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

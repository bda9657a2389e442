"""CPU thread policy: how many threads the forward uses and how idle threads wait.

Measured on this project's shared 2-core machine (benchmarks/README.md, "Thread policy"):
PyTorch's OpenMP threads *spin* while they wait for work by default (``OMP_WAIT_POLICY``
unset acts as ACTIVE for GNU OpenMP), so a forward that competes with other CPU-bound
processes burns its time slices spinning and its latency collapses (150-2230 ms against
46-52 ms with one thread, issue 14). With passive waiting an idle thread sleeps and gives
the core back; the forward then gets its fair share of the CPU.

The policy, applied by the entry points (``anomaly-seg`` and the ROS node):

* ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it. OpenMP reads it once, when
  the runtime is loaded, i.e. when ``torch`` is imported: :func:`apply_wait_policy` must run
  before that, and says so when it is too late. Override: ``OMP_WAIT_POLICY=ACTIVE``.
* intra-op threads: ``model.threads`` (``0`` = :func:`default_threads`, every core this
  process may run on, unless ``OMP_NUM_THREADS`` sets the count).
* ONNX Runtime's own thread pool spins too (``session.intra_op.allow_spinning``); its backend
  follows :func:`spinning_allowed`, and OpenVINO's threads are not pinned to cores.

This module does not import torch at module level, so that importing it cannot load OpenMP.
"""

from __future__ import annotations

import logging
import os
import sys

from anomaly_seg_ros.common.errors import ConfigError

LOGGER = logging.getLogger(__name__)

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
#: Measured default: see the module docstring and benchmarks/README.md.
DEFAULT_WAIT_POLICY = "PASSIVE"
WAIT_POLICIES = ("ACTIVE", "PASSIVE")


def apply_wait_policy(environ: dict[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` to the default unless already set; returns the policy in effect.

    Call it before ``import torch`` (first thing in an entry point). When torch is already
    loaded the variable still reaches child processes, but this process keeps the policy
    its OpenMP runtime read at load time; that is logged.

    Raises:
        ConfigError: the environment sets a policy other than ACTIVE or PASSIVE.
    """
    environ = os.environ if environ is None else environ
    policy = environ.get(WAIT_POLICY_ENV, "").strip().upper()
    if policy and policy not in WAIT_POLICIES:
        raise ConfigError(f"{WAIT_POLICY_ENV}: expected one of {', '.join(WAIT_POLICIES)}, got {policy!r}")
    if not policy:
        policy = DEFAULT_WAIT_POLICY
        environ[WAIT_POLICY_ENV] = policy
        if "torch" in sys.modules and environ is os.environ:
            LOGGER.debug(
                "%s=%s set after torch was loaded: it applies to child processes only", WAIT_POLICY_ENV, policy
            )
    return policy


def wait_policy(environ: dict[str, str] | None = None) -> str:
    """The OpenMP wait policy of this process's environment (ACTIVE when unset: GNU OpenMP's default)."""
    environ = os.environ if environ is None else environ
    return environ.get(WAIT_POLICY_ENV, "").strip().upper() or "ACTIVE"


def spinning_allowed(environ: dict[str, str] | None = None) -> bool:
    """Whether runtimes with their own thread pools (ONNX Runtime) may spin: only under ACTIVE."""
    return wait_policy(environ) != "PASSIVE"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(environ: dict[str, str] | None = None) -> int:
    """Intra-op threads for ``model.threads: 0``: ``OMP_NUM_THREADS`` when set, else every available core."""
    environ = os.environ if environ is None else environ
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        try:
            count = int(value.split(",")[0])
        except ValueError:
            raise ConfigError(f"OMP_NUM_THREADS: expected a positive integer, got {value!r}") from None
        if count > 0:
            return count
    return available_cores()


def configure_threads(threads: int) -> int:
    """``torch.set_num_threads`` to ``threads`` (0 = :func:`default_threads`); returns the count in effect."""
    if threads < 0:
        raise ConfigError(f"model.threads: expected an integer >= 0 (0 = {default_threads()} here), got {threads}")
    import torch

    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return torch.get_num_threads()

"""ONNX Runtime and OpenVINO: the network exported once to ONNX, run by a CPU inference runtime.

Both runtimes read the same ONNX file, exported from the eager model by ``torch.onnx.export``
at the fixed network input shape (the engine cache keeps it under backend ``onnx``, keyed like
every engine: weights, shape, torch version; see engine_cache.py). They are optional extras
(``pip install anomaly_seg_ros[cpu-runtimes]``); a runtime that is not installed is a backend
that cannot run here, with the reason logged, like TensorRT without a GPU.

Precision. fp32 by default. OpenVINO runs bf16 on CPUs that have it *unless told otherwise*
(its CPU plugin's default ``INFERENCE_PRECISION_HINT``), which moved logits by up to 1.2 and
labels on 2.3 % of pixels in issue 14's measurement: the hint is always set, to ``f32``, or to
``bf16`` only when that precision is asked for, and the precision the compiled model reports
is checked against it. ONNX Runtime's CPU provider runs fp32 only.

Threads follow the process's thread policy (inference/threads.py): as many intra-op threads
as PyTorch uses, ONNX Runtime's pool spins only under ``OMP_WAIT_POLICY=ACTIVE``, OpenVINO's
threads are not pinned to cores (pinning is wrong on a machine shared with other processes).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_seg_ros.inference.threads import spinning_allowed

LOGGER = logging.getLogger(__name__)

#: Runtime name -> the module that must import for it to run.
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: ONNX opset of the export (supported by onnxruntime >= 1.14 and openvino >= 2023.0).
OPSET = 18
#: Output names of the exported graphs, in the order the backends return them.
OUTPUT_NAMES = {"logits": ["logits"], "features": ["logits", "features", "head_logits"]}
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
TEMPORARY_PREFIX = "anomaly_seg_onnx_"

Runner = Callable[[torch.Tensor], Any]


class RuntimeUnavailable(Exception):
    """The runtime cannot run here; the message is the reason."""


def runtime_installed(name: str) -> bool:
    """Whether the runtime's Python package is installed (found, not imported: openvino takes a second)."""
    try:
        return importlib.util.find_spec(RUNTIME_MODULES[name]) is not None
    except (ImportError, ValueError):
        return False


def require(name: str) -> None:
    """Raise :class:`RuntimeUnavailable` with the install hint when the runtime does not import."""
    _import(name)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(RUNTIME_MODULES[name])
    except Exception as error:  # noqa: BLE001
        raise RuntimeUnavailable(
            f"{name} cannot be imported ({type(error).__name__}: {error}); "
            "install the optional extra: pip install 'anomaly_seg_ros[cpu-runtimes]'"
        ) from None


def export_onnx(graph: nn.Module, example: torch.Tensor, path: Path, outputs: str) -> None:
    """``torch.onnx.export`` of ``graph`` at ``example``'s fixed shape into ``path``.

    The TorchScript-based exporter takes seconds where the dynamo exporter takes ~10x longer
    on these networks and gives the same graph numerically (both within 4e-8 of eager on
    ERFNet); the dynamo exporter is the fallback for graphs the first cannot trace.
    """
    names = OUTPUT_NAMES[outputs]
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # deprecation notes of the exporters, not about this graph
                torch.onnx.export(
                    graph,
                    (example,),
                    str(path),
                    input_names=["input"],
                    output_names=names,
                    opset_version=OPSET,
                    dynamo=dynamo,
                    **({"verbose": False} if dynamo else {}),
                )
            return
        except Exception as error:  # noqa: BLE001  (any exporter failure: try the other, then report both)
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(error).__name__}: {error}")
    raise RuntimeUnavailable("ONNX export failed: " + "; ".join(errors)[:600])


def openvino_supports(precision: str) -> str | None:
    """Why OpenVINO's CPU plugin cannot run ``precision`` here, or None when it can."""
    if precision not in OPENVINO_PRECISION:
        return f"openvino runs fp32 or bf16, not {precision}"
    if precision == "bf16":
        openvino = _import("openvino")
        capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            return f"bf16 needs a CPU with BF16 support (OpenVINO reports {', '.join(capabilities)} here)"
    return None


def build_runner(name: str, onnx_path: Path, outputs: str, precision: str, threads: int) -> Runner:
    """A callable ``x -> logits`` (or the features tuple) running ``onnx_path`` with runtime ``name``."""
    if name == "onnxruntime":
        return _onnxruntime_runner(onnx_path, outputs, precision, threads)
    if name == "openvino":
        return _openvino_runner(onnx_path, outputs, precision, threads)
    raise ValueError(f"unknown CPU runtime {name!r}")


def _as_input(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _as_output(arrays: list[np.ndarray], outputs: str) -> Any:
    tensors = tuple(torch.from_numpy(array) for array in arrays)
    return tensors[0] if outputs == "logits" else tensors


def _onnxruntime_runner(onnx_path: Path, outputs: str, precision: str, threads: int) -> Runner:
    ort = _import("onnxruntime")
    if precision != "fp32":
        raise RuntimeUnavailable(f"onnxruntime's CPU provider runs fp32 only, not {precision}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool spins while waiting, as OpenMP does under ACTIVE: follow the process policy.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning_allowed() else "0")
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        raise RuntimeUnavailable(f"onnxruntime cannot load the model: {type(error).__name__}: {error}") from None
    input_name = session.get_inputs()[0].name
    names = OUTPUT_NAMES[outputs]

    def run(x: torch.Tensor) -> Any:
        return _as_output(session.run(names, {input_name: _as_input(x)}), outputs)

    return run


def _openvino_runner(onnx_path: Path, outputs: str, precision: str, threads: int) -> Runner:
    openvino = _import("openvino")
    problem = openvino_supports(precision)
    if problem is not None:
        raise RuntimeUnavailable(problem)
    wanted = OPENVINO_PRECISION[precision]
    core = openvino.Core()
    settings = {
        "INFERENCE_PRECISION_HINT": wanted,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "ENABLE_CPU_PINNING": False,
    }
    try:
        compiled = core.compile_model(str(onnx_path), "CPU", settings)
    except Exception as error:  # noqa: BLE001
        raise RuntimeUnavailable(f"openvino cannot compile the model: {type(error).__name__}: {error}") from None
    actual = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    if wanted not in actual.replace("float32", "f32").replace("bfloat16", "bf16"):
        raise RuntimeUnavailable(f"openvino compiled {actual} although {wanted} was asked for")
    request = compiled.create_infer_request()
    count = len(OUTPUT_NAMES[outputs])

    def run(x: torch.Tensor) -> Any:
        request.infer({0: _as_input(x)})
        # Output tensors are the request's own buffers, overwritten by the next inference: copy.
        return _as_output([np.array(request.get_output_tensor(i).data) for i in range(count)], outputs)

    return run


def temporary_onnx(graph: nn.Module, example: torch.Tensor, outputs: str) -> Path:
    """Export into a new temporary folder (its name starts with :data:`TEMPORARY_PREFIX`)."""
    folder = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
    path = folder / "model.onnx"
    export_onnx(graph, example, path, outputs)
    return path

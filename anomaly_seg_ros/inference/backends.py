"""Inference backends behind one interface: Torch-TensorRT, torch.compile, ONNX Runtime, OpenVINO, eager.

``select_backend(model, request)`` tries the backends of the request in a fixed order and
returns the first that builds and runs a warm-up pass on this machine:

=============  ===================================  ==================================
``backend``    order tried (``fallback: true``)      ``fallback: false``
=============  ===================================  ==================================
auto, CUDA     tensorrt -> compile -> eager          (auto always falls back)
auto, CPU      :data:`CPU_AUTO_ORDER`, the fastest   (auto always falls back)
tensorrt       tensorrt -> compile -> eager          tensorrt, else ConfigError
compile        compile -> eager                      compile, else ConfigError
onnxruntime    onnxruntime -> eager                  onnxruntime, else ConfigError
openvino       openvino -> eager                     openvino, else ConfigError
eager          eager                                 eager
=============  ===================================  ==================================

Every skipped backend is logged with its reason and kept on the returned
:class:`InferenceBackend` (``skipped``), which the perception core exposes, so diagnostics show
which backend actually runs and why the faster ones did not. Precision follows the same
rule: fp16 needs CUDA, int8 needs TensorRT (and a calibration folder), bf16 needs OpenVINO on
a CPU with BF16; an unsupported precision is a ConfigError, or with ``fallback`` the nearest
supported one (int8 -> fp16 on CUDA, -> fp32 on CPU; bf16 -> fp32), logged.

Backends compile for one input shape (the network input: batch 1 at ``model.input_size``);
a tensor of another shape runs the eager model, so offline tools may still batch.

**Features.** Scorers that read penultimate features (``requires_features``) need more than
logits. Each backend compiles the network's logits graph, and on first request a second graph,
:class:`FeatureGraph`, whose ``forward`` returns the plain tuple ``(logits, features,
head_logits)`` of ``model.forward_with_features`` — a tensor function that torch.compile,
torch.export and Torch-TensorRT take as it is. The perception core asks for it at start-up
when the configured scorer needs features, so a switch to such a scorer at run time is the
only case that compiles while running (logged).

**CPU.** ONNX Runtime and OpenVINO (optional extras, inference/cpu_runtimes.py) run the
network exported to ONNX (one export, shared). ``auto`` on CPU builds every candidate of
:data:`CPU_AUTO_ORDER` that is installed (and eager with channels-last memory format:
oneDNN's channels-last convolutions, x1.17-1.33 faster than plain eager at 512x1024), times
:data:`AUTO_RACE_ROUNDS` interleaved forwards of each at start-up and keeps the fastest:
which runtime wins depends on the CPU (AVX-512, AMX) and the input size, and on this
project's 2-core machine ONNX Runtime and OpenVINO were within noise of each other
(benchmarks/README.md). Below :data:`CPU_RUNTIME_MIN_PIXELS` it runs eager directly.
torch.compile (Inductor, C++ codegen) ran at x0.78 of plain eager at 256x512 after minutes of
compilation, so it is tried on CPU only when asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.inference import cpu_runtimes
from anomaly_seg_ros.inference.engine_cache import EngineCache, make_key
from anomaly_seg_ros.models.outputs import SegmentationOutput

LOGGER = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "compile", "onnxruntime", "openvino", "eager")
#: What ``auto`` tries on a CPU device, fastest first (measured, see the module docstring).
CPU_AUTO_ORDER = ("onnxruntime", "openvino", "eager")
CUDA_AUTO_ORDER = ("tensorrt", "compile", "eager")
#: Explicit requests fall back to the backends after them in this order.
FALLBACK_ORDER = {
    "tensorrt": ("tensorrt", "compile", "eager"),
    "compile": ("compile", "eager"),
    "onnxruntime": ("onnxruntime", "eager"),
    "openvino": ("openvino", "eager"),
    "eager": ("eager",),
}
#: Backends that run the network exported to ONNX (one cached ONNX file, backend key ``onnx``).
ONNX_BACKENDS = ("onnxruntime", "openvino")
#: Smallest network input (H*W) for which ``auto`` on CPU tries the ONNX runtimes (the demo's 128x256).
CPU_RUNTIME_MIN_PIXELS = 128 * 256
#: Timed forwards per candidate when ``auto`` on CPU picks the fastest backend at start-up.
AUTO_RACE_ROUNDS = 3
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

Graph = Callable[[torch.Tensor], Any]


class BackendUnavailable(Exception):
    """A backend cannot run here; the message is the reason that is logged and recorded."""


@dataclass(frozen=True)
class BackendRequest:
    """What the configuration asks for (``model.*`` keys) plus the network's input contract."""

    backend: str = "auto"
    precision: str = "fp32"
    device: str = "cpu"
    fallback: bool = True
    compile_mode: str = "default"
    cuda_graphs: bool = False
    input_size: tuple[int, int] = (512, 1024)
    #: Channels-last memory format; None = the measured default (on for eager on CPU).
    channels_last: bool | None = None
    engine_cache: str | None = None
    int8_calibration: str | None = None
    int8_calibration_images: int = 64
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_config(
        cls, model_config: Any, *, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]
    ) -> BackendRequest:
        """The request of a :class:`~anomaly_seg_ros.core.config.ModelConfig`."""
        return cls(
            backend=model_config.backend,
            precision=model_config.precision,
            device=model_config.device,
            fallback=model_config.fallback,
            compile_mode=model_config.compile_mode,
            cuda_graphs=model_config.cuda_graphs,
            input_size=(int(input_size[0]), int(input_size[1])),
            engine_cache=model_config.engine_cache,
            int8_calibration=model_config.int8_calibration,
            int8_calibration_images=model_config.int8_calibration_images,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.input_size)


def candidate_order(
    backend: str, device: torch.device | str, *, fallback: bool, input_size: Sequence[int] | None = None
) -> tuple[str, ...]:
    """Backends tried for a request, in order (see the table in the module docstring).

    ``auto`` on CPU tries the ONNX runtimes that are installed, and only for network inputs of
    at least :data:`CPU_RUNTIME_MIN_PIXELS` (``input_size`` None counts as large): below that
    the forward takes milliseconds in eager PyTorch and the ONNX export would cost more at
    start-up than it saves.
    """
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda":
            return CUDA_AUTO_ORDER
        small = input_size is not None and int(input_size[0]) * int(input_size[1]) < CPU_RUNTIME_MIN_PIXELS
        return tuple(
            name
            for name in CPU_AUTO_ORDER
            if name not in ONNX_BACKENDS or (not small and cpu_runtimes.runtime_installed(name))
        )
    if backend not in FALLBACK_ORDER:
        raise ConfigError(f"model.backend: expected one of auto, {', '.join(BACKENDS)}, got {backend!r}")
    order = FALLBACK_ORDER[backend]
    return order if fallback else order[:1]


def cache_identity(backend: str, precision: str) -> tuple[str, str]:
    """(backend, precision) under which the engine cache keys ``backend``'s engine.

    The ONNX runtimes share one fp32 ONNX file (backend ``onnx``); they apply the precision
    when they compile it. Every other backend keys its own engine at its own precision.
    """
    return ("onnx", "fp32") if backend in ONNX_BACKENDS else (backend, precision)


def agreement_with_eager(backend: InferenceBackend, inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """How far ``backend`` is from the eager fp32 network on ``inputs`` (network inputs, on its device).

    Returns the share of equal labels (arg-max) and the largest absolute logit difference, over
    all inputs: what ``anomaly-seg export`` reports so that a reduced precision (bf16, fp16, int8)
    is chosen knowing what it changes.
    """
    equal = total = 0
    largest = 0.0
    with torch.inference_mode():
        for x in inputs:
            reference = backend.model(x).float()
            logits = backend(x)
            equal += int((logits.argmax(1) == reference.argmax(1)).sum())
            total += reference[:, 0].numel()
            largest = max(largest, float((logits - reference).abs().max()))
    return {"frames": len(inputs), "label_agreement": equal / max(total, 1), "max_abs_logit_diff": largest}


def precision_problem(backend: str, precision: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device``, or None when it can."""
    if precision not in PRECISIONS:
        return f"expected one of {', '.join(PRECISIONS)}, got {precision!r}"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 needs a CUDA device (half-precision convolutions on CPU are slower than fp32)"
    if precision == "int8" and backend != "tensorrt":
        return f"int8 runs only on the tensorrt backend, not {backend}"
    if precision == "bf16" and backend != "openvino":
        return f"bf16 runs only on the openvino backend, not {backend}"
    return None


class FeatureGraph(nn.Module):
    """``forward(x) -> (logits, features, head_logits)``: ``forward_with_features`` as plain tensors.

    Compiled backends trace tensor functions, not dataclasses; this wrapper exposes the
    feature pass of ``model`` in that form (the weights are shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # A new module starts in training mode; an exporter that restores the wrapper's mode
        # after tracing would otherwise put the network into training mode (batch-norm drift).
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        output = self.model.forward_with_features(x)
        return output.logits, output.features, output.head_logits


@dataclass
class InferenceBackend:
    """The network as it runs: which backend, at which precision, and why others were skipped."""

    model: nn.Module
    request: BackendRequest
    name: str
    precision: str
    #: (backend or "precision" or "features", reason) for everything skipped, in the order tried.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Engine cache status when the logits graph was built: hit, missing, stale, corrupt; None = no cache.
    cache_status: str | None = None
    #: ``auto`` on CPU: median start-up forward (ms) of every candidate that was built; empty otherwise.
    selection: dict[str, float] = field(default_factory=dict)
    _logits: Graph | None = None
    _features: Graph | None = None
    _channels_last: bool = False

    # -- running ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device(self.request.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(N, C, H, W)`` of the network input ``x`` (float, on the device)."""
        if tuple(x.shape) != self.request.input_shape or self._logits is None:
            return _as_float(self._eager(self.model)(x))
        return _as_float(self._logits(self._prepare(x)))

    __call__ = forward

    def forward_with_features(self, x: torch.Tensor) -> SegmentationOutput:
        """Logits, features and head logits from one pass (compiles the feature graph on first use)."""
        if tuple(x.shape) != self.request.input_shape:
            return _float_output(self._eager(self.model.forward_with_features)(x))
        if self._features is None:
            self.build_features()
        logits, features, head_logits = self._features(self._prepare(x))
        return SegmentationOutput(logits=_as_float(logits), features=features, head_logits=_as_float(head_logits))

    def build_features(self) -> None:
        """Compile the feature graph with this backend (falls back to eager features, logged)."""
        if self._features is not None:
            return
        graph = FeatureGraph(self.model)
        try:
            self._features, _ = _BUILDERS[self.name](graph, self.request, self.precision, "features")
        except BackendUnavailable as error:
            reason = f"{self.name} cannot compile the feature graph: {error}; features run eager"
            LOGGER.warning("backend: %s", reason)
            self.skipped.append(("features", reason))
            self._features = self._eager(graph)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def _eager(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return _with_autocast(fn, self.device, self.precision if self.name != "tensorrt" else "fp32")

    def describe(self) -> str:
        """One line: what runs, and what was skipped with why."""
        text = f"{self.name} ({self.precision}{', channels-last' if self._channels_last else ''})"
        if self.cache_status == "hit":
            text += ", engine loaded from the cache"
        elif self.cache_status:
            text += f", engine built and cached (was {self.cache_status})"
        if self.selection:
            ranked = sorted(self.selection.items(), key=lambda item: item[1])
            timings = ", ".join(f"{name} {ms:.0f} ms" for name, ms in ranked)
            text += f"; fastest at start-up of {timings}"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{name}: {reason}" for name, reason in self.skipped)
        return text


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _float_output(output: SegmentationOutput) -> SegmentationOutput:
    output.logits = _as_float(output.logits)
    output.head_logits = _as_float(output.head_logits)
    return output


def _with_autocast(fn: Callable[..., Any], device: torch.device, precision: str) -> Callable[..., Any]:
    """``fn`` under fp16 autocast when ``precision`` is fp16 (CUDA): weights stay fp32 for the scorers."""
    if precision != "fp16":
        return fn

    def run(*args: Any) -> Any:
        with torch.autocast(device_type=device.type, dtype=torch.float16):
            return fn(*args)

    return run


# ---------------------------------------------------------------------------- selection


def select_backend(model: nn.Module, request: BackendRequest, *, features: bool = False) -> InferenceBackend:
    """Build the first backend of the request's order that works here (see the module docstring).

    ``auto`` on CPU with an ONNX runtime installed builds every candidate instead and keeps the
    fastest on this machine (:func:`_race`): which runtime wins depends on the CPU.

    Raises:
        ConfigError: the requested backend or precision cannot run here and
            ``request.fallback`` is off (or nothing in the order works), naming the key and why.
    """
    device = torch.device(request.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {request.device!r} requested but CUDA is not available")
    allow_fallback = request.fallback or request.backend == "auto"
    order = candidate_order(request.backend, device, fallback=allow_fallback, input_size=request.input_size)
    model = model.to(device).eval()
    race = request.backend == "auto" and device.type == "cpu" and len(order) > 1
    skipped: list[tuple[str, str]] = []
    built: list[InferenceBackend] = []
    # The race's ONNX runtimes share one export: a temporary cache when none is configured.
    shared = tempfile.mkdtemp(prefix=cpu_runtimes.TEMPORARY_PREFIX) if race and not request.engine_cache else None
    try:
        for name in order:
            precision = request.precision
            problem = precision_problem(name, precision, device)
            if problem is not None:
                if not allow_fallback:
                    raise ConfigError(f"model.precision: {problem}; set model.fallback=true to run fp32 instead")
                precision = "fp16" if device.type == "cuda" and precision == "int8" else "fp32"
                skipped.append(("precision", f"{request.precision} on {name}: {problem}; running {precision}"))
            graph: nn.Module = FeatureGraph(model) if features else model
            build_request = request
            if shared is not None and name in ONNX_BACKENDS:
                build_request = dataclasses.replace(request, engine_cache=shared)
            try:
                runner, cache_status = _BUILDERS[name](
                    graph, build_request, precision, "features" if features else "logits"
                )
            except BackendUnavailable as error:
                reason = str(error)
                skipped.append((name, reason))
                if not allow_fallback:
                    raise ConfigError(
                        f"model.backend: {name} cannot run here: {reason}; "
                        f"set model.fallback=true to fall back to {' -> '.join(FALLBACK_ORDER[name][1:]) or 'nothing'}"
                    ) from None
                LOGGER.warning("backend %s skipped: %s", name, reason)
                continue
            backend = InferenceBackend(
                model, request, name, precision, skipped, None if build_request is not request else cache_status
            )
            backend._channels_last = _use_channels_last(name, request)
            if features:
                backend._features = runner
            else:
                backend._logits = runner
            built.append(backend)
            if not race:
                break
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    if not built:
        raise ConfigError(
            f"model.backend: none of {', '.join(order)} can run here: "
            + "; ".join(f"{name}: {reason}" for name, reason in skipped)
        )
    backend = _race(built, features) if len(built) > 1 else built[0]
    if backend.name != order[0] or skipped:
        LOGGER.warning("backend: running %s", backend.describe())
    else:
        LOGGER.info("backend: running %s", backend.describe())
    return backend


def _race(backends: Sequence[InferenceBackend], features: bool) -> InferenceBackend:
    """The fastest of ``backends`` on this machine: median of :data:`AUTO_RACE_ROUNDS` interleaved forwards.

    One untimed round first (oneDNN and the runtimes set up their kernels on the first call).
    The winner records every candidate's time (``selection``), which ``describe`` reports.
    """
    example = _example(backends[0].request)
    samples: dict[str, list[float]] = {backend.name: [] for backend in backends}
    with torch.inference_mode():
        for round_index in range(1 + AUTO_RACE_ROUNDS):
            for backend in backends:
                start = time.perf_counter()
                backend.forward_with_features(example) if features else backend.forward(example)
                if round_index:
                    samples[backend.name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: float(sorted(times)[len(times) // 2]) for name, times in samples.items()}
    winner = min(backends, key=lambda backend: medians[backend.name])
    winner.selection = medians
    return winner


def _use_channels_last(name: str, request: BackendRequest) -> bool:
    if request.channels_last is not None:
        return request.channels_last
    # Measured: channels-last convolutions are the fastest CPU path (oneDNN); on CUDA the
    # compiled backends choose layouts themselves.
    return name == "eager" and torch.device(request.device).type == "cpu"


def _example(request: BackendRequest) -> torch.Tensor:
    # A fixed, seeded input: warm-up and export must not depend on global RNG state.
    generator = torch.Generator().manual_seed(0)
    return torch.rand(request.input_shape, generator=generator).to(request.device)


def _cached(
    graph: nn.Module,
    request: BackendRequest,
    backend: str,
    precision: str,
    outputs: str,
    *,
    build: Callable[[], Any],
    save: Callable[[Any, Path], None],
    load: Callable[[Path], Any],
) -> tuple[Any, str | None]:
    """``build()`` through the engine cache when one is configured."""
    if not request.engine_cache:
        return build(), None
    model = graph.model if isinstance(graph, FeatureGraph) else graph
    key = make_key(
        model,
        input_shape=request.input_shape,
        precision=precision,
        backend=backend,
        device=request.device,
        outputs=outputs,
    )
    engine, status, _ = EngineCache(request.engine_cache).get_or_build(key, build=build, save=save, load=load)
    return engine, status


def export_program(graph: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of the inference graph (eval mode, fixed shape)."""
    try:
        return torch.export.export(graph, (example,))
    except Exception as error:  # noqa: BLE001  (export failures are reported as the backend's reason)
        raise BackendUnavailable(f"torch.export failed: {type(error).__name__}: {error}") from None


def _save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    with warnings.catch_warnings():
        # torch.export groups tensors sharing storage and warns about GPU weights when a
        # group has no single covering tensor; our weights are plain parameters, saved whole.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, path)


def _load_program(path: Path) -> torch.export.ExportedProgram:
    return torch.export.load(path)


def _cached_program(
    graph: nn.Module, request: BackendRequest, backend: str, precision: str, outputs: str
) -> tuple[nn.Module, str | None]:
    """The graph's ExportedProgram from the engine cache (exported and stored on a miss), as a module."""
    program, status = _cached(
        graph,
        request,
        backend,
        precision,
        outputs,
        build=lambda: export_program(graph, _example(request)),
        save=_save_program,
        load=_load_program,
    )
    return program.module(), status


def _build_eager(graph: nn.Module, request: BackendRequest, precision: str, outputs: str) -> tuple[Graph, str | None]:
    device = torch.device(request.device)
    channels_last = _use_channels_last("eager", request)
    runner: nn.Module = graph
    status = None
    if request.engine_cache:
        # The eager engine is the ExportedProgram of the graph: reloading it skips tracing
        # and pins exactly the graph that was validated when it was exported.
        runner, status = _cached_program(graph, request, "eager", precision, outputs)
    if channels_last:
        runner = runner.to(memory_format=torch.channels_last)
    fn = _with_autocast(runner, device, precision)
    if device.type == "cuda":
        if request.cuda_graphs:
            fn = _capture_cuda_graph(fn, _example(request))
        _warm_up(fn, request, channels_last)  # cuDNN picks its kernels here, not on the first frame
    return fn, status


def _build_compile(graph: nn.Module, request: BackendRequest, precision: str, outputs: str) -> tuple[Graph, str | None]:
    device = torch.device(request.device)
    mode = request.compile_mode
    if request.cuda_graphs and device.type == "cuda" and mode == "default":
        mode = "reduce-overhead"  # torch.compile's CUDA-graph mode
    source: nn.Module = graph
    status = None
    if request.engine_cache:
        # torch.compile output cannot be serialised; the cache holds the exported graph and
        # Inductor's own on-disk kernel cache makes the recompilation at start-up cheap.
        source, status = _cached_program(graph, request, "compile", precision, outputs)
    try:
        compiled = torch.compile(source, mode=None if mode == "default" else mode, fullgraph=False)
        fn = _with_autocast(compiled, device, precision)
        if device.type == "cuda" and mode in ("reduce-overhead", "max-autotune"):
            fn = _cloned_cudagraph_outputs(fn)
        _warm_up(fn, request, False)
    except BackendUnavailable:
        raise
    except Exception as error:  # noqa: BLE001  (any compiler failure means: this backend cannot run here)
        raise BackendUnavailable(f"torch.compile failed: {type(error).__name__}: {str(error)[:300]}") from None
    return fn, status


def _cloned_cudagraph_outputs(fn: Graph) -> Graph:
    """Outputs of torch.compile's CUDA-graph modes live in memory the next replay overwrites;
    mark each call as a new step and clone the outputs, so a caller may keep them."""

    def run(x: torch.Tensor) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        output = fn(x)
        return tuple(t.clone() for t in output) if isinstance(output, tuple) else output.clone()

    return run


def _build_tensorrt(
    graph: nn.Module, request: BackendRequest, precision: str, outputs: str
) -> tuple[Graph, str | None]:
    device = torch.device(request.device)
    try:
        import torch_tensorrt
    except Exception as error:  # noqa: BLE001  (ImportError, or a broken install raising anything)
        raise BackendUnavailable(
            f"torch_tensorrt cannot be imported ({type(error).__name__}: {error}); "
            f"install the torch-tensorrt release built for torch {torch.__version__}"
        ) from None
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT needs a CUDA device, model.device is {request.device!r}")
    example = _example(request)

    def build() -> Any:
        source = graph
        context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if precision == "int8":
            source, context = _int8_quantize(graph, request)
        enabled = {"fp32": {torch.float32}, "fp16": {torch.float16}, "int8": {torch.int8}}[precision]
        try:
            with context:
                program = torch.export.export(source, (example,))
            settings = {
                "enabled_precisions": enabled,
                # Without fallback an op TensorRT cannot convert is an error, not a silent
                # PyTorch island in the engine.
                "require_full_compilation": not request.fallback,
            }
            try:
                return torch_tensorrt.dynamo.compile(program, arg_inputs=[example], **settings)
            except TypeError as error:
                if "arg_inputs" not in str(error):
                    raise
                # Releases before 2.3 call the argument ``inputs``.
                return torch_tensorrt.dynamo.compile(program, inputs=[example], **settings)
        except BackendUnavailable:
            raise
        except Exception as error:  # noqa: BLE001  (unsupported layers, builder errors)
            raise BackendUnavailable(f"Torch-TensorRT compilation failed: {type(error).__name__}: {error}") from None

    def save(module: Any, path: Path) -> None:
        try:
            torch_tensorrt.save(module, str(path), output_format="exported_program", arg_inputs=[example])
        except TypeError:  # releases before 2.5 call the argument ``inputs``
            torch_tensorrt.save(module, str(path), output_format="exported_program", inputs=[example])

    def load(path: Path) -> Any:
        return torch.export.load(path).module()

    engine, status = _cached(graph, request, "tensorrt", precision, outputs, build=build, save=save, load=load)
    fn: Graph = engine
    if request.cuda_graphs:
        fn = _capture_cuda_graph(fn, example)
    _warm_up(fn, request, False)
    return fn, status


def _int8_quantize(graph: nn.Module, request: BackendRequest) -> tuple[nn.Module, Any]:
    """ModelOpt post-training INT8 quantisation calibrated on ``request.int8_calibration`` images."""
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import export_torch_mode
    except Exception as error:  # noqa: BLE001
        raise BackendUnavailable(
            f"int8 needs NVIDIA ModelOpt (pip install nvidia-modelopt): {type(error).__name__}: {error}"
        ) from None
    batches = calibration_batches(request)
    import copy

    quantized = copy.deepcopy(graph)

    def forward_loop(module: nn.Module) -> None:
        for batch in batches:
            module(batch)

    mtq.quantize(quantized, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    return quantized, export_torch_mode()


def calibration_batches(request: BackendRequest) -> list[torch.Tensor]:
    """Up to ``int8_calibration_images`` images of the calibration folder, preprocessed like frames.

    Raises:
        DatasetError: the folder is not set, does not exist or holds no images.
    """
    import cv2

    from anomaly_seg_ros.inference.preprocess import frame_to_tensor, normalize_images

    if not request.int8_calibration:
        raise DatasetError("model.int8_calibration: int8 needs a folder of calibration images (png/jpg)")
    folder = Path(request.int8_calibration)
    if not folder.is_dir():
        raise DatasetError(f"model.int8_calibration: {folder} is not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"model.int8_calibration: no {'/'.join(IMAGE_SUFFIXES)} images under {folder}")
    # Evenly spaced over the sorted list, so the calibration covers the whole folder.
    count = min(request.int8_calibration_images, len(paths))
    chosen = [paths[round(i * (len(paths) - 1) / max(count - 1, 1))] for i in range(count)]
    batches = []
    for path in chosen:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"model.int8_calibration: cannot read image {path}")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        tensor = frame_to_tensor(rgb, request.device)
        batches.append(normalize_images(tensor, request.input_size, request.mean, request.std))
    return batches


def _warm_up(fn: Graph, request: BackendRequest, channels_last: bool) -> None:
    """One pass at the fixed shape: compilers compile here, not on the first camera frame."""
    example = _example(request)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fn(example)
    if torch.device(request.device).type == "cuda":
        torch.cuda.synchronize(request.device)


def _capture_cuda_graph(fn: Graph, example: torch.Tensor) -> Graph:
    """Replay ``fn`` at ``example``'s shape as a CUDA graph (one launch instead of one per kernel).

    Inputs are copied into a static buffer and outputs cloned out of the graph's static
    ones, so a caller keeping an output across frames never sees it overwritten.
    """
    static_input = example.clone()
    stream = torch.cuda.Stream(device=example.device)
    stream.wait_stream(torch.cuda.current_stream(example.device))
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream, as capture requires
                fn(static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = fn(static_input)

    def replay(x: torch.Tensor) -> Any:
        static_input.copy_(x)
        graph.replay()
        if isinstance(static_output, tuple):
            return tuple(t.clone() for t in static_output)
        return static_output.clone()

    return replay


def _build_cpu_runtime(runtime: str) -> Callable[[nn.Module, BackendRequest, str, str], tuple[Graph, str | None]]:
    """Builder of an ONNX runtime backend: the graph exported to ONNX (cached), loaded by ``runtime``."""

    def build(graph: nn.Module, request: BackendRequest, precision: str, outputs: str) -> tuple[Graph, str | None]:
        if torch.device(request.device).type != "cpu":
            raise BackendUnavailable(f"{runtime} runs on the CPU here, model.device is {request.device!r}")
        example = _example(request)
        try:
            cpu_runtimes.require(runtime)
            # One ONNX file serves both runtimes: it is keyed as backend "onnx" at fp32, and the
            # runtime applies the precision when it compiles the file. Without a cache it is a
            # temporary file, removed once the runtime has read it.
            path, status = _cached(
                graph,
                request,
                *cache_identity(runtime, precision),
                outputs,
                build=lambda: cpu_runtimes.temporary_onnx(graph, example, outputs),
                save=lambda exported, target: shutil.copyfile(exported, target),
                load=lambda target: target,
            )
            try:
                runner = cpu_runtimes.build_runner(runtime, path, outputs, precision, torch.get_num_threads())
            finally:
                if path.parent.name.startswith(cpu_runtimes.TEMPORARY_PREFIX):
                    shutil.rmtree(path.parent, ignore_errors=True)
        except cpu_runtimes.RuntimeUnavailable as error:
            raise BackendUnavailable(str(error)) from None
        _warm_up(runner, request, False)
        return runner, status

    return build


_BUILDERS: dict[str, Callable[[nn.Module, BackendRequest, str, str], tuple[Graph, str | None]]] = {
    "eager": _build_eager,
    "compile": _build_compile,
    "tensorrt": _build_tensorrt,
    "onnxruntime": _build_cpu_runtime("onnxruntime"),
    "openvino": _build_cpu_runtime("openvino"),
}

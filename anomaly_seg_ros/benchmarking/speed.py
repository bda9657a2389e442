"""How fast the pipeline is, stage by stage, on this machine (behind ``anomaly-seg benchmark``).

Measures in one run, on the same frames and the same process:

* **bare forward**: the selected backend's forward on a ready network input (what a model
  benchmark would report), and plain eager PyTorch (contiguous, fp32) for the speed-up;
* **full call**: ``Perception.process`` from a uint8 frame in memory to every output on the
  host (labels, heatmap, alerts; colour views only with ``--render``), plus the ROS image
  conversion (``convert``: a bgr8 ``sensor_msgs/Image`` to the RGB frame) timed on its own;
* **stages**: convert, upload, preprocess, forward, score, far_field (with ``far_field.zoom`` > 1),
  postprocess, download, alerts, render;
* **scorers**: each scorer's own time on the output it reads, and its share of the plain forward
  (see "Scorer cost" below); logit scorers are timed as the pipeline's score stage (scores and
  labels, compiled at start-up where the pipeline compiles, core/score_stage.py), next to the
  same work unfused in eager PyTorch;
* **contention** (``--contention N``): the forward alternately without and with N busy
  neighbour processes (benchmarking/contention.py).

Every figure is a percentile over ``--iterations`` warm iterations after ``--warmup``
untimed ones. Peak memory: host RSS high-water mark (``VmHWM`` of /proc/self/status) and
``torch.cuda.max_memory_allocated``. Without ``--checkpoint`` the weights are random (fine
for speed; the report says so), and the frames are synthetic road scenes so that the
alert stage sees realistic label maps rather than noise.

Scorer cost. Logit scorers read the plain forward's logits; scorers with ``requires_features``
(PGU) read the output of the features path (``backend.forward_with_features``, the pass the
pipeline runs for them), and the features path's own extra cost over the plain forward is
reported separately (``features_forward_ms``, ``features_over_bare``). A scorer's time is only
its own work on that output; its ratio is its p50 over the p50 of the plain forward, both
sampled in the same loop (forward, eager forward, features forward, then every scorer, per
iteration) so that all see the same machine load. Scorers with ``requires_fit`` (SML,
FlowEneDet) load the fit stored next to ``--checkpoint`` (``scoring.fitting.prepare_scorer``);
without one they are fitted in-process on a few synthetic frames, for timing only (the report
says so). Ensembles cost one forward per member by nature and ODIN a backward and a second
forward (offline only): both are timed when asked for, with no target. Targets (share of the
forward, :data:`SCORER_TARGETS`): MSP, MaxLogit, MaxEntropy, energy <= 3 %, SML <= 5 %,
PGU <= 10 %, FlowEneDet <= 15 %.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_seg_ros.benchmarking.contention import CONTENTION_HEADER, contention_markdown, measure_contention
from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.core.config import load_config, replace_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.core.score_stage import ScoreStage, fusable
from anomaly_seg_ros.evaluation.grid import ScorerSpec, parse_scorer_spec
from anomaly_seg_ros.inference.preprocess import frame_to_tensor, labels_from_logits, normalize_images
from anomaly_seg_ros.inference.threads import wait_policy
from anomaly_seg_ros.models import build_model, load_model
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import Scorer, get_scorer, prepare_scorer
from anomaly_seg_ros.scoring.base import TemperatureScorer
from anomaly_seg_ros.scoring.fitting import FittedScorer, fit_path

STAGES = (
    "convert",
    "upload",
    "preprocess",
    "forward",
    "score",
    "far_field",
    "postprocess",
    "download",
    "alerts",
    "render",
)
PERCENTILES = (50, 95, 99)
#: Largest share of the plain forward (p50) each scorer may cost on the device it runs on.
SCORER_TARGETS: dict[str, float] = {
    "maxlogit": 0.03,
    "msp": 0.03,
    "maxentropy": 0.03,
    "energy": 0.03,
    "sml": 0.05,
    "pgu": 0.10,
    "flowenedet": 0.15,
}
#: Why a scorer has no target (its cost is more than a reduction by construction).
NO_TARGET = {
    "ensemble_entropy": "one extra forward per member by nature",
    "ensemble_mi": "one extra forward per member by nature",
    "odin": "offline only: a backward and a second forward per frame",
}
#: Synthetic frames an unfitted scorer is fitted on in-process (timing only).
FIT_FRAMES = 4


# ------------------------------------------------------------------------------ measuring


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of a list of milliseconds (linear interpolation, numpy's default)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    result = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    result["mean"] = float(values.mean())
    return result


def time_calls(fn: Callable[[], Any], *, iterations: int, warmup: int, device: torch.device) -> list[float]:
    """Milliseconds of ``iterations`` calls of ``fn`` after ``warmup`` untimed ones (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), MiB; NaN where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return info


def _frames(size: tuple[int, int], count: int = 4) -> list[np.ndarray]:
    from anomaly_seg_ros.data.synthetic import render_scene

    return [render_scene(seed, height=size[0], width=size[1], num_anomalies=1).image for seed in range(count)]


def _image_message(frame: np.ndarray) -> Any:
    from anomaly_seg_ros.ros.conversions import make_header, rgb_to_image_msg
    from anomaly_seg_ros.ros.typestore import get_typestore

    typestore = get_typestore()
    return rgb_to_image_msg(typestore, frame, make_header(typestore, 0, "camera"), "bgr8")


def synthetic_fit_batches(
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    count: int = FIT_FRAMES,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised input, trainId labels) of ``count`` synthetic scenes rendered at ``input_size``."""
    from anomaly_seg_ros.data.synthetic import render_scene

    batches = []
    for seed in range(count):
        scene = render_scene(1000 + seed, height=input_size[0], width=input_size[1])
        inputs = normalize_images(frame_to_tensor(scene.image, device), input_size, mean, std)
        batches.append((inputs, torch.from_numpy(scene.labels).long().unsqueeze(0).to(device)))
    return batches


def prepare_benchmark_scorer(
    spec: ScorerSpec,
    model: torch.nn.Module,
    *,
    checkpoint: str | None,
    metadata: dict[str, Any],
    fit_batches: Callable[[], Sequence[tuple[torch.Tensor, torch.Tensor]]],
) -> tuple[Scorer, str | None]:
    """A bound scorer as the pipeline would build it, and where its fit came from (None: needs none).

    Temperature scorers without a temperature get the checkpoint's calibrated one, as in
    ``Perception``. A scorer with ``requires_fit`` loads the fit next to ``checkpoint`` when it
    exists (a stale or mismatched one raises ConfigError, as in the pipeline); otherwise it is
    fitted on ``fit_batches()``, which is only good for timing.
    """
    params, _ = spec.resolve(metadata)
    scorer = get_scorer(spec.name, **params)
    if isinstance(scorer, TemperatureScorer) and "temperature" not in params:
        scorer = get_scorer(spec.name, **params, temperature=float(metadata.get("temperature", 1.0)))
    if not scorer.requires_fit:
        prepare_scorer(scorer, model, metadata=metadata)
        return scorer, None
    if checkpoint and fit_path(checkpoint, spec.name).is_file():
        prepare_scorer(scorer, model, checkpoint=checkpoint, metadata=metadata)
        return scorer, f"fit file {fit_path(checkpoint, spec.name).name}"
    target = getattr(scorer, "inner", scorer)
    if not isinstance(target, FittedScorer):
        raise ConfigError(f"scorer {spec.name!r} declares requires_fit but has no fit() (not a FittedScorer)")
    scorer.bind(model)
    batches = fit_batches()
    target.fit(model, batches)
    where = "no checkpoint" if not checkpoint else f"no {fit_path(checkpoint, spec.name).name}"
    return scorer, f"fitted in-process on {len(batches)} synthetic frames ({where}): timing only"


def _pipeline_spec(specs: Sequence[ScorerSpec], checkpoint: str | None) -> ScorerSpec:
    """The first scorer the live pipeline can run as configured: not offline, fit on disk if it needs one."""
    for spec in specs:
        scorer = get_scorer(spec.name, **spec.resolve({})[0])
        if scorer.offline_only:
            continue
        if scorer.requires_fit and not (checkpoint and fit_path(checkpoint, spec.name).is_file()):
            continue
        return spec
    return parse_scorer_spec("maxlogit")


def benchmark(
    *,
    checkpoint: str | None = None,
    model_name: str = "erfnet",
    num_classes: int = 19,
    input_size: tuple[int, int] | None = None,
    frame_sizes: Sequence[tuple[int, int]] | None = None,
    overrides: Sequence[str] = (),
    scorers: Sequence[str | ScorerSpec] = ("maxlogit",),
    iterations: int = 20,
    warmup: int = 3,
    render: bool = False,
    contention: int = 0,
    full_call: bool = True,
) -> dict[str, Any]:
    """Run every measurement (see the module docstring); returns the report as a JSON-able dict.

    ``contention`` > 0 adds the backend's forward timed alternately without and with that many
    busy neighbour processes (benchmarking/contention.py); ``full_call=False`` skips the
    full-call measurements at the frame sizes.
    """
    specs = [parse_scorer_spec(spec) if isinstance(spec, str) else spec for spec in scorers]
    if not specs:
        raise ConfigError("benchmark: give at least one scorer")
    pipeline_spec = _pipeline_spec(specs, checkpoint)
    if checkpoint:
        model, metadata = load_model(checkpoint, device="cpu")
        model_name = model.model_name
    else:
        torch.manual_seed(0)
        model, metadata = build_model(model_name, num_classes=num_classes).eval(), {}
    size_override = [f"model.input_size=[{input_size[0]}, {input_size[1]}]"] if input_size else []
    config = load_config(None, [f"model.name={model_name}", *size_override, *overrides])
    # the pipeline's scorer loads its fit (if any) from next to model.weights, as in the node
    config = replace_config(
        config,
        {
            "model": {"weights": str(checkpoint) if checkpoint else None},
            "scorer": {"name": pipeline_spec.name, "params": pipeline_spec.resolve(metadata)[0]},
        },
    )
    calibration = metadata.get("calibration", {})
    threshold = calibration.get(pipeline_spec.name, {}).get("threshold")
    auto_threshold = config.alerts.threshold is None and threshold is None
    if auto_threshold:
        config = replace_config(config, {"alerts": {"threshold": 0.0}})  # replaced below, once logits exist
    reference_model = copy.deepcopy(model)  # plain eager: the backend may change the memory format in place
    perception = Perception(model, config, metadata=metadata)
    device = perception.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    network_size = perception.input_size
    frame_sizes = list(frame_sizes or [network_size]) if full_call else []
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "model": model_name,
        "weights": checkpoint or "random (no checkpoint given: speed only, outputs meaningless)",
        "network_input": list(network_size),
        "backend": perception.backend.name,
        "backend_detail": perception.backend.describe(),
        "precision": perception.backend.precision,
        "device": str(device),
        "iterations": iterations,
        "warmup": warmup,
        "render": render,
        "pipeline_scorer": pipeline_spec.key,
        "thread_policy": {"threads": perception.threads, "omp_wait_policy": wait_policy()},
        "results": [],
    }

    # Bare forward of the running backend, and of plain eager PyTorch, on a ready input.
    with torch.inference_mode():
        example = normalize_images(
            torch.from_numpy(_frames(network_size, 1)[0]).permute(2, 0, 1)[None].to(device),
            network_size,
            perception.mean,
            perception.std,
        )
        reference_model = reference_model.to(device).eval()
        fit_cache: list[tuple[torch.Tensor, torch.Tensor]] = []

        def fit_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
            if not fit_cache:
                fit_cache.extend(synthetic_fit_batches(network_size, perception.mean, perception.std, device))
            return fit_cache

        prepared = {
            spec.key: prepare_benchmark_scorer(
                spec, perception.model, checkpoint=checkpoint, metadata=metadata, fit_batches=fit_batches
            )
            for spec in specs
        }
        plain = SegmentationOutput(logits=perception.backend(example), inputs=example)
        with_features = any(scorer.requires_features for scorer, _ in prepared.values())
        if with_features:
            featured = perception.backend.forward_with_features(example)
            featured.inputs = example

        # Logit scorers run as the pipeline's score stage does: fused with the label arg-max
        # and compiled (at this shape and layout, before timing) where the pipeline compiles.
        stages = {key: ScoreStage(scorer) for key, (scorer, _) in prepared.items() if fusable(scorer)}
        for stage in stages.values():
            stage.warm_up(plain.logits)
        scorer_calls: dict[str, Callable[[], Any]] = {}
        for key, (scorer, _) in prepared.items():
            if key in stages:
                scorer_calls[key] = lambda stage=stages[key]: stage(plain)
            else:
                scorer_calls[key] = lambda s=scorer: s(featured if s.requires_features else plain)
        # The same work unfused and uncompiled (the scorer's eager code, then the label arg-max), in
        # the same loop, for the speed-up of the compiled stage.
        for key in [key for key, stage in stages.items() if stage.compiled]:
            scorer_calls[f"{key} (eager)"] = lambda s=prepared[key][0]: (s(plain), labels_from_logits(plain.logits))

        def one(fn: Callable[[], Any]) -> list[float]:
            return time_calls(fn, iterations=1, warmup=0, device=device)

        # One loop, every measurement in turn: plain forward, eager forward, features path and
        # each scorer see the same machine load, so their ratios hold on a busy machine too.
        bare, eager, features_ms = [], [], []
        scorer_samples: dict[str, list[float]] = {key: [] for key in scorer_calls}
        for index in range(warmup + iterations):
            timed_bare = one(lambda: perception.backend(example))
            timed_eager = one(lambda: reference_model(example))
            timed_features = one(lambda: perception.backend.forward_with_features(example)) if with_features else []
            timed_scorers = {key: one(lambda run=run: run()) for key, run in scorer_calls.items()}
            if index >= warmup:
                bare += timed_bare
                eager += timed_eager
                features_ms += timed_features
                for key, samples in timed_scorers.items():
                    scorer_samples[key] += samples
    report["bare_forward_ms"] = percentiles(bare)
    report["eager_forward_ms"] = percentiles(eager)
    report["speedup_over_eager"] = report["eager_forward_ms"]["p50"] / report["bare_forward_ms"]["p50"]
    forward_p50 = report["bare_forward_ms"]["p50"]
    if with_features:
        report["features_forward_ms"] = percentiles(features_ms)
        report["features_over_bare"] = report["features_forward_ms"]["p50"] / forward_p50
    report["scorers"] = {}
    for spec in specs:
        scorer, fit = prepared[spec.key]
        times = percentiles(scorer_samples[spec.key])
        target = SCORER_TARGETS.get(spec.name)
        ratio = times["p50"] / forward_p50
        entry: dict[str, Any] = {
            **times,
            "name": spec.name,
            "input": "features path" if scorer.requires_features else "plain forward",
            "score_stage": stages[spec.key].describe() if spec.key in stages else None,
            "eager_stage_ms": percentiles(scorer_samples[f"{spec.key} (eager)"])
            if f"{spec.key} (eager)" in scorer_samples
            else None,
            "ratio_to_forward": ratio,
            "target": target,
            "meets_target": None if target is None else bool(ratio <= target),
            "no_target_reason": NO_TARGET.get(spec.name) if target is None else None,
            "fit": fit,
        }
        if scorer.requires_features:
            # what choosing this scorer adds to a logits-only pipeline: its own time plus the features path's extra
            extra_ms = times["p50"] + report["features_forward_ms"]["p50"] - forward_p50
            entry["extra_with_features_path"] = extra_ms / forward_p50
        report["scorers"][spec.key] = entry
    if contention:
        with torch.inference_mode():
            report["contention"] = measure_contention(
                lambda: time_calls(lambda: perception.backend(example), iterations=1, warmup=0, device=device),
                neighbours=contention,
                threads=perception.threads,
                iterations=iterations,
                warmup=warmup,
            )
    if auto_threshold:
        # Random weights have no calibrated threshold: take the score exceeded by 0.1 % of the
        # pixels of a warm-up frame, as training's calibration does on road pixels.
        with torch.inference_mode():
            scores = perception.scorer(featured if perception.scorer.requires_features else plain)
        perception.update({"alerts": {"threshold": float(torch.quantile(scores.flatten()[::7].float(), 0.999))}})

    for size in frame_sizes:
        frames = _frames(tuple(size))
        messages = [_image_message(frame) for frame in frames]
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        full_call = _full_call(perception, messages, stages, render)

        perception.reset()
        # Bare forward and full call alternate, so both see the same machine load (a shared
        # CI machine's load changes within seconds). Production timing: no per-stage CUDA
        # synchronisation, so copies overlap compute as in the node.
        perception.sync_stage_timings = False
        bare_samples: list[float] = []
        full_samples: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):
                perception.backend(example)
                full_call()
            for _ in range(iterations):
                bare_samples += time_calls(lambda: perception.backend(example), iterations=1, warmup=0, device=device)
                full_samples += time_calls(full_call, iterations=1, warmup=0, device=device)
        if device.type == "cuda":
            # The stage breakdown needs a synchronisation per stage: a second pass.
            for values in stages.values():
                values.clear()
            perception.sync_stage_timings = True
            time_calls(full_call, iterations=iterations, warmup=0, device=device)
        perception.sync_stage_timings = True
        stages = {stage: values[-iterations:] for stage, values in stages.items()}
        full_stats, bare_stats = percentiles(full_samples), percentiles(bare_samples)
        # Everything but the network: full call minus its own forward stage, per iteration.
        overhead = [full - forward for full, forward in zip(full_samples, stages["forward"], strict=True)]
        report["results"].append(
            {
                "frame_size": list(size),
                "full_call_ms": full_stats,
                "bare_forward_ms": bare_stats,
                "non_forward_ms": percentiles(overhead),
                "fps": 1000.0 / full_stats["mean"],
                "full_over_bare": full_stats["p50"] / bare_stats["p50"],
                "stages_ms": {stage: percentiles(values) for stage, values in stages.items()},
            }
        )
    report["peak_host_rss_mb"] = peak_rss_mb()
    report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def scorer_markdown(report: dict[str, Any]) -> list[str]:
    """The "Scorer cost" table: p50/p95, share of the plain forward, target and whether it is met."""
    forward = report["bare_forward_ms"]["p50"]
    lines = [
        f"Scorer cost (pipeline scorer: {report.get('pipeline_scorer', '?')}); share = scorer p50 / plain forward "
        f"p50 ({forward:.1f} ms), sampled alternately",
        "",
        "| scorer | reads | p50 ms | p95 ms | share of forward | target | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    notes = []
    for key, entry in report["scorers"].items():
        target = entry.get("target")
        met = entry.get("meets_target")
        verdict = "–" if met is None else ("yes" if met else "**no**")
        lines.append(
            f"| {key} | {entry.get('input', 'plain forward')} | {entry['p50']:.1f} | {entry['p95']:.1f} | "
            f"{100 * entry['ratio_to_forward']:.1f} % | {'–' if target is None else f'≤ {100 * target:.0f} %'} | "
            f"{verdict} |"
        )
        if entry.get("fit"):
            notes.append(f"{key}: {entry['fit']}")
        if entry.get("score_stage"):
            note = f"{key}: timed as the pipeline's score stage: {entry['score_stage']}"
            if entry.get("eager_stage_ms"):
                eager_p50 = entry["eager_stage_ms"]["p50"]
                note += (
                    f"; the same unfused in eager PyTorch (scorer, then arg-max) p50 {eager_p50:.1f} ms, "
                    f"{100 * eager_p50 / forward:.1f} % of the forward, "
                    f"x{eager_p50 / entry['p50']:.1f} the compiled stage"
                )
            notes.append(note)
        if entry.get("no_target_reason"):
            notes.append(f"{key}: no target ({entry['no_target_reason']})")
        if "extra_with_features_path" in entry:
            notes.append(
                f"{key}: with the features path's extra time, {100 * entry['extra_with_features_path']:+.1f} % over "
                "the plain forward in all"
            )
    if "features_forward_ms" in report:
        extra = report["features_over_bare"] - 1.0
        notes.insert(
            0,
            f"features path (forward_with_features) p50 {report['features_forward_ms']['p50']:.1f} ms: "
            f"{100 * extra:+.1f} % over the plain forward",
        )
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return [*lines, ""] if notes else lines


def _full_call(
    perception: Perception, messages: Sequence[Any], stages: dict[str, list[float]], render: bool
) -> Callable[[], None]:
    """One frame from a ROS image message to every output; appends each stage's milliseconds to ``stages``."""
    from anomaly_seg_ros.ros.conversions import message_to_rgb

    counter = iter(range(10**12))

    def call() -> None:
        message = messages[next(counter) % len(messages)]
        start = time.perf_counter()
        frame = message_to_rgb(message)
        convert_ms = (time.perf_counter() - start) * 1000.0
        result = perception.process(frame, render_color=render, render_overlay=render)
        stages["convert"].append(convert_ms)
        for stage in STAGES[1:]:
            stages[stage].append(result.timings_ms.get(stage, 0.0))

    return call


# ------------------------------------------------------------------------------ reporting


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what benchmarks/README.md quotes)."""
    machine = report["machine"]
    bare, eager = report["bare_forward_ms"], report["eager_forward_ms"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads)" + (f", GPU {machine['gpu']}" if machine["gpu"] else ""),
        f"Load average at start / end: {machine['load_average']} / {machine.get('load_average_end')}",
        f"Model: {report['model']}, weights: {report['weights']}; network input "
        f"{report['network_input'][0]}x{report['network_input'][1]}",
        f"Backend: {report['backend_detail']}; device {report['device']}; "
        f"{report['iterations']} iterations after {report['warmup']} warm-up; "
        f"render {'on' if report['render'] else 'off'}",
        "",
        "| measurement | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| bare forward ({report['backend']}) | {bare['p50']:.1f} | {bare['p95']:.1f} | {bare['p99']:.1f} |",
        f"| bare forward, plain eager fp32 | {eager['p50']:.1f} | {eager['p95']:.1f} | {eager['p99']:.1f} |",
    ]
    if "features_forward_ms" in report:
        features = report["features_forward_ms"]
        lines.append(
            f"| forward with features ({report['backend']}) | {features['p50']:.1f} | {features['p95']:.1f} | "
            f"{features['p99']:.1f} |"
        )
    lines += ["", f"Speed-up of {report['backend']} over plain eager (p50): x{report['speedup_over_eager']:.2f}", ""]
    lines += scorer_markdown(report)
    if "contention" in report:
        policy = report["thread_policy"]
        lines += [
            f"Contention: {report['contention']['neighbours']} busy neighbour processes, paused and resumed "
            f"around alternate samples ({report['contention']['iterations']} each); OMP_WAIT_POLICY="
            f"{policy['omp_wait_policy']}",
            "",
            *CONTENTION_HEADER,
            *contention_markdown(report["contention"], f"bare forward ({report['backend']})"),
            "",
        ]
    for result in report["results"]:
        full = result["full_call_ms"]
        height, width = result["frame_size"]
        extra = result["non_forward_ms"]
        lines += [
            f"Frame {width}x{height}: full call p50 {full['p50']:.1f} / p95 {full['p95']:.1f} / "
            f"p99 {full['p99']:.1f} ms, "
            f"{result['fps']:.2f} FPS; bare forward (interleaved) p50 {result['bare_forward_ms']['p50']:.1f} ms; "
            f"**full / bare = {result['full_over_bare']:.3f}**; everything but the forward p50 {extra['p50']:.1f} ms",
            "",
            "| stage | p50 ms | p95 ms | p99 ms |",
            "| --- | ---: | ---: | ---: |",
        ]
        for stage, times in result["stages_ms"].items():
            if stage == "far_field" and times["p99"] == 0.0:
                continue  # off (far_field.zoom = 1)
            lines.append(f"| {stage} | {times['p50']:.2f} | {times['p95']:.2f} | {times['p99']:.2f} |")
        lines.append("")
    gpu = f", peak GPU {report['peak_gpu_mb']:.0f} MiB" if report["peak_gpu_mb"] is not None else ""
    lines.append(f"Peak host RSS {report['peak_host_rss_mb']:.0f} MiB{gpu}")
    return "\n".join(lines) + "\n"

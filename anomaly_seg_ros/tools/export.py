"""``anomaly-seg export``: compile a checkpoint once into the engine cache the node loads at start-up.

Builds the engine exactly as ``Perception`` would at start-up (same backend selection, same
cache key; ONNX Runtime and OpenVINO share one exported ``.onnx`` file), but without
fallback: an export that cannot produce the requested backend fails with the reason instead
of silently caching something else. Point ``model.engine_cache`` of
the node at the same folder and it starts without compiling.

Each export reports the engine's agreement with the eager fp32 network on a few synthetic
frames (share of equal labels, largest logit difference), so that a reduced precision (bf16
on OpenVINO, fp16/int8 on TensorRT) is chosen knowing what it changes.
"""

from __future__ import annotations

import argparse
import json

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.inference.backends import (
    BACKENDS,
    PRECISIONS,
    BackendRequest,
    agreement_with_eager,
    cache_identity,
    select_backend,
)
from anomaly_seg_ros.inference.engine_cache import EngineCache, make_key
from anomaly_seg_ros.inference.preprocess import frame_to_tensor, normalize_images
from anomaly_seg_ros.models import load_model, model_defaults


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="compile a checkpoint into the engine cache (TensorRT, an ExportedProgram, or ONNX)",
        description="Compile once and store the engine with its cache key; the node reloads it without compiling.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors or the authors' .pth)")
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="network input (default: the checkpoint's)"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (engines are per GPU model)")
    parser.add_argument("--out", default="engines", help="engine cache folder (model.engine_cache)")
    parser.add_argument("--features", action="store_true", help="also export the feature graph (feature scorers)")
    parser.add_argument("--int8-calibration", help="image folder for INT8 calibration")
    parser.add_argument("--int8-calibration-images", type=int, default=64)
    parser.add_argument(
        "--agreement-frames",
        type=int,
        default=4,
        help="synthetic frames on which the engine is compared with eager fp32 (labels, logits); 0 = skip",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = [
        f"model.weights={args.checkpoint}",
        f"model.backend={args.backend}",
        f"model.precision={args.precision}",
        f"model.device={args.device}",
        "model.fallback=false",
        f"model.engine_cache={args.out}",
        f"model.int8_calibration_images={args.int8_calibration_images}",
        *([f"model.int8_calibration={args.int8_calibration}"] if args.int8_calibration else []),
        *([f"model.input_size=[{args.input_size[0]}, {args.input_size[1]}]"] if args.input_size else []),
        *args.set,
    ]
    config = load_config(None, overrides)
    model, metadata = load_model(config.model.weights, device="cpu")
    defaults = model_defaults(model.model_name)
    input_size = tuple(config.model.input_size or metadata.get("input_size") or defaults["input_size"])
    request = BackendRequest.from_config(
        config.model,
        input_size=input_size,
        mean=config.model.mean or metadata.get("mean") or defaults["mean"],
        std=config.model.std or metadata.get("std") or defaults["std"],
    )
    cache = EngineCache(args.out)
    records = []
    for features in (False, True) if args.features else (False,):
        backend = select_backend(model, request, features=features)
        cache_backend, cache_precision = cache_identity(backend.name, backend.precision)
        key = make_key(
            model,
            input_shape=request.input_shape,
            precision=cache_precision,
            backend=cache_backend,
            device=request.device,
            outputs="features" if features else "logits",
        )
        record = {
            "engine": str(cache.engine_path(key)),
            "key": key.digest,
            "status_before": backend.cache_status,
            "backend": backend.describe(),
        }
        if not features and args.agreement_frames > 0:
            # What the engine's precision changes, on synthetic road scenes at the network input.
            inputs = _agreement_inputs(args.agreement_frames, request)
            record["agreement_with_eager_fp32"] = agreement_with_eager(backend, inputs)
        records.append(record)
    print(json.dumps(records, indent=2))
    return 0


def _agreement_inputs(count: int, request: BackendRequest) -> list:
    from anomaly_seg_ros.data.synthetic import render_scene

    height, width = request.input_size
    scenes = [render_scene(seed, height=height, width=width, num_anomalies=1).image for seed in range(count)]
    return [
        normalize_images(frame_to_tensor(frame, request.device), request.input_size, request.mean, request.std)
        for frame in scenes
    ]

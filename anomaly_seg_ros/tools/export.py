"""``anomaly-seg export``: compile a checkpoint once into the engine cache the node loads at start-up.

Builds the engine exactly as ``Perception`` would at start-up (same backend selection, same
cache key), but without fallback: an export that cannot produce the requested backend fails
with the reason instead of silently caching something else. Point ``model.engine_cache`` of
the node at the same folder and it starts without compiling.
"""

from __future__ import annotations

import argparse
import json

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.inference.backends import BackendRequest, select_backend
from anomaly_seg_ros.inference.engine_cache import EngineCache, make_key
from anomaly_seg_ros.models import load_model, model_defaults


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="compile a checkpoint into the engine cache (TensorRT, or an ExportedProgram)",
        description="Compile once and store the engine with its cache key; the node reloads it without compiling.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors or the authors' .pth)")
    parser.add_argument("--backend", choices=("tensorrt", "compile", "eager"), required=True)
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    parser.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="network input (default: the checkpoint's)"
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (engines are per GPU model)")
    parser.add_argument("--out", default="engines", help="engine cache folder (model.engine_cache)")
    parser.add_argument("--features", action="store_true", help="also export the feature graph (feature scorers)")
    parser.add_argument("--int8-calibration", help="image folder for INT8 calibration")
    parser.add_argument("--int8-calibration-images", type=int, default=64)
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
        key = make_key(
            model,
            input_shape=request.input_shape,
            precision=backend.precision,
            backend=backend.name,
            device=request.device,
            outputs="features" if features else "logits",
        )
        records.append(
            {
                "engine": str(cache.engine_path(key)),
                "key": key.digest,
                "status_before": backend.cache_status,
                "backend": backend.describe(),
            }
        )
    print(json.dumps(records, indent=2))
    return 0

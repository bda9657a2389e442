"""``anomaly-seg fit-scorer``: fit a scorer's statistics (SML) or flow (FlowEneDet) on in-distribution data.

The result is stored next to the checkpoint as ``<ckpt stem>.<scorer>.safetensors`` with
JSON metadata naming the checkpoint's SHA-256 and the scorer's fit parameters; the
perception core loads it whenever the scorer is selected for that checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import torch
import yaml
from tqdm import tqdm

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.data.datasets import CityscapesDataset
from anomaly_seg_ros.inference.preprocess import frame_to_tensor, normalize_images, resize_labels
from anomaly_seg_ros.models import load_model, model_defaults
from anomaly_seg_ros.scoring import get_scorer
from anomaly_seg_ros.scoring.fitting import FittedScorer, save_fit
from anomaly_seg_ros.scoring.flow import FitQuality


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-scorer",
        help="fit a scorer that needs in-distribution statistics (sml, flowenedet) and store it next to the checkpoint",
        description="Run the checkpoint over a Cityscapes-layout split and fit the scorer's statistics or flow; "
        "writes <checkpoint stem>.<scorer>.safetensors next to the checkpoint.",
    )
    parser.add_argument("name", help="scorer name, e.g. sml or flowenedet")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.safetensors)")
    parser.add_argument("--data", required=True, help="Cityscapes-layout dataset root (in-distribution)")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--max-images", type=int, dest="max_images", help="use at most N images (default: all)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="scorer parameter, e.g. max_steps=800"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow-worse",
        action="store_true",
        dest="allow_worse",
        help="save a flow fit even when it detects misclassification worse than its own input (default: refuse)",
    )
    parser.set_defaults(run=run)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["max_steps=800", "loss=ce"]`` -> ``{"max_steps": 800, "loss": "ce"}`` (values parsed as YAML)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected PARAM=VALUE, e.g. max_steps=800")
        params[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return params


def dataset_batches(
    dataset: CityscapesDataset,
    input_size: tuple[int, int],
    mean: Any,
    std: Any,
    device: torch.device,
    *,
    limit: int,
    progress: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One (normalised input, trainId labels at the input size) pair per image: the deployment preprocessing."""
    for index in tqdm(range(limit), desc="fit", unit="image", disable=not progress):
        image, labels = dataset[index]
        inputs = normalize_images(frame_to_tensor(image, device), input_size, mean, std)
        label_tensor = resize_labels(torch.from_numpy(labels).unsqueeze(0), input_size).long().to(device)
        yield inputs, label_tensor


def check_fit_quality(name: str, quality: FitQuality, *, allow_worse: bool = False) -> None:
    """Refuse (ConfigError) a flow fit that ranks misclassification worse than its own input does."""
    if not quality.worse_than_input:
        return
    message = (
        f"the {name!r} fit detects misclassification worse than its own input: held-out AUROC "
        f"{100 * quality.auroc_flow:.2f} % for the flow's posterior < {100 * quality.auroc_input:.2f} % for the energy"
    )
    if not allow_worse:
        raise ConfigError(
            f"not saving it: {message}; fit on more images or with other parameters (--set), "
            "or keep it anyway with --allow-worse"
        )
    print(f"warning: saving it anyway (--allow-worse): {message}")


def run(args: argparse.Namespace) -> int:
    scorer = get_scorer(args.name, **parse_params(args.set))
    target = getattr(scorer, "inner", scorer)
    if not isinstance(target, FittedScorer):
        raise ConfigError(f"scorer {args.name!r} needs no fit; fitted scorers: sml, flowenedet")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images: expected an integer >= 1, got {args.max_images}")
    device = torch.device(args.device)
    model, meta = load_model(args.checkpoint, device=device)
    defaults = model_defaults(meta["model"])
    input_size = tuple(meta.get("input_size") or defaults["input_size"])
    mean, std = meta.get("mean") or defaults["mean"], meta.get("std") or defaults["std"]
    dataset = CityscapesDataset(args.data, args.split)
    limit = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    scorer.bind(model)
    batches = dataset_batches(dataset, input_size, mean, std, device, limit=limit, progress=not args.no_progress)
    target.fit(model, batches)
    info: dict[str, Any] = {"data": str(args.data), "split": args.split, "images": limit}
    quality = getattr(target, "quality", None)
    if quality is not None:
        print(f"fit quality of {args.name!r}: {quality.describe()}")
        info["quality"] = quality.as_dict()
        check_fit_quality(args.name, quality, allow_worse=args.allow_worse)
    path = save_fit(target, args.checkpoint, info=info)
    print(f"fitted scorer {args.name!r} on {limit} images of {args.data} ({args.split}); wrote {path}")
    return 0

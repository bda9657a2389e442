"""``anomaly-seg evaluate``: checkpoints x scorers x datasets in one run, tables like seed 000's.

For each checkpoint and anomaly dataset the network runs once per image and every scorer
reads the same output. Pixel metrics (AuPRC, FPR95, AUROC) are pooled over the dataset with
bounded memory. OUT gets ``table.md`` / ``table.csv`` (method, mIoU, AuPRC and FPR95 per
dataset, as seed 000 Tables 1-4), ``results.json`` (every metric, pixel counts, error bounds
of the streaming metrics) and ``plots/`` (PR and ROC curves, score histograms, example
frames). Finished cells are kept in ``OUT/cells/``: running the same command again, or with
more scorers or datasets, computes only what is missing.

Scorers: ``msp``, ``maxlogit``, ``maxentropy``, ``energy`` (and any registered one), with
parameters after ``@``: ``msp@T=0.5``, ``msp@T=fitted`` (the checkpoint's ``temperature``).
A scorer without a temperature runs at T = 1, the seed's baseline rows; the perception
pipeline applies a calibrated checkpoint's temperature, which is ``NAME@T=fitted`` here.

``--checkpoint``, ``--scorer`` and ``--dataset`` take several values each (and may be repeated).

Example (the seed's Table 2 on synthetic data)::

    anomaly-seg evaluate --checkpoint checkpoints/erfnet_synthetic.safetensors \\
        --scorer msp --scorer msp@T=0.5 --scorer msp@T=0.75 --scorer msp@T=1.1 --scorer msp@T=fitted \\
        --dataset synthetic:/tmp/synth --segmentation /tmp/synth/cityscapes --out runs/evaluate
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_seg_ros.evaluation.grid import GridOptions, parse_dataset_spec, parse_scorer_spec, run_grid
from anomaly_seg_ros.evaluation.tables import grid_markdown

DEFAULT_SCORERS = ("msp", "maxlogit", "maxentropy", "energy")


def _positive(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="checkpoints x scorers x datasets: AuPRC / FPR95 / mIoU tables, results.json and plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # list options take several values and may repeat: --scorer msp maxlogit == --scorer msp --scorer maxlogit
    parser.add_argument(
        "--checkpoint",
        action="extend",
        nargs="+",
        required=True,
        type=Path,
        metavar="CKPT",
        help="checkpoints: our .safetensors or a bare PyTorch state_dict (.pth; network and class count inferred)",
    )
    parser.add_argument(
        "--scorer",
        action="extend",
        nargs="+",
        metavar="SPEC",
        help=f"scorers NAME[@KEY=VALUE,...], e.g. msp@T=0.5 (default: {', '.join(DEFAULT_SCORERS)})",
    )
    parser.add_argument(
        "--dataset",
        action="extend",
        nargs="+",
        default=[],
        metavar="KIND:ROOT",
        help="anomaly datasets, e.g. synthetic:/tmp/synth or auto:ROOT (the kind is detected and named)",
    )
    parser.add_argument("--segmentation", type=Path, metavar="ROOT", help="Cityscapes-layout root for mIoU")
    parser.add_argument("--segmentation-split", default="val", help="split of --segmentation (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="report folder (finished cells in it are reused)")
    parser.add_argument("--config", type=Path, help="perception YAML (preprocessing, device, backend)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. model.device=cuda"
    )
    parser.add_argument("--examples", type=_count, default=4, help="example frames per grid (default: %(default)s)")
    parser.add_argument("--tpr", type=_positive, default=0.95, help="TPR of the FPR column (default: %(default)s)")
    parser.add_argument(
        "--components",
        choices=("anomaly", "obstacle"),
        help="also SMIYC component metrics (sIoU, PPV, F1) with this track's size filters: a second pass per cell",
    )
    parser.add_argument(
        "--exact-pixels",
        type=_count,
        default=4_000_000,
        metavar="N",
        help="pixels per scorer and dataset kept for exact metrics (5 bytes each) before fixed-size histograms "
        "with stated error bounds take over (default: %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables and results.json only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = GridOptions(
        checkpoints=list(args.checkpoint),
        scorers=[parse_scorer_spec(text) for text in (args.scorer or DEFAULT_SCORERS)],
        datasets=[parse_dataset_spec(text) for text in args.dataset],
        out=args.out,
        segmentation=args.segmentation,
        segmentation_split=args.segmentation_split,
        config=args.config,
        overrides=list(args.set),
        examples=args.examples,
        tpr=args.tpr,
        progress=not args.no_progress,
        plots=not args.no_plots,
        components=args.components,
        exact_pixels=args.exact_pixels,
    )
    results = run_grid(options)
    print(grid_markdown(results), end="")
    print(f"report written to {args.out} ({', '.join(results['log']) if results['log'] else 'nothing to do'})")
    return 0

"""Seed 000 Table 4 on synthetic scenes: ERFNet trained with CE, the void classifier, LogitNorm + CE
and IsoMax+ + CE, each evaluated with its scorers (mIoU, AuPRC, FPR95).

Not a CI test: it trains four networks (about 6–8 min each on a 2-core CPU with the defaults), and
with ``--variants oe_energy oe_void oe_entropy`` the outlier-exposure variants at the same budget.
Every variant shares the data, the schedule, the seed and the ENet class weights; only the loss
(and, for the void classifier, the 20th class; for IsoMax+, the head) differs. Writes the table
to ``--doc`` with the command that made it::

    python benchmarks/train_losses.py --data runs/synthetic_data/cityscapes \
        --eval /tmp/synth_baseline --out runs/loss_experiment --doc docs/training_losses_synthetic.md

``--data`` is a Cityscapes-layout training set (``anomaly-seg synth``), ``--eval`` a folder with
``anomaly/`` and ``cityscapes/`` (held-out scenes of another dataset seed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: The outlier source and pasting of the outlier-exposure variants (as in config/train_synthetic_oe.yaml).
_OE_OUTLIERS = "outliers={source: procedural, probability: 0.8, max_objects: 3, blend: feather}"
#: name -> (training overrides, scorers evaluated for it)
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "ce": (["losses=[{name: ce}]"], ["msp", "maxlogit", "maxentropy"]),
    "void": (["num_classes=20", "losses=[{name: ce}]"], ["void", "msp", "maxlogit", "maxentropy"]),
    "logitnorm_ce": (
        ["losses=[{name: logitnorm, temperature: 0.04}, {name: ce}]"],
        ["msp", "maxlogit", "maxentropy"],
    ),
    "isomax_ce": (["head=isomax", "losses=[{name: isomax}, {name: ce}]"], ["isomax", "msp", "maxlogit", "maxentropy"]),
    # Outlier exposure (data/outliers.py, losses/outlier.py): procedural outliers pasted on the road.
    "oe_energy": (
        [
            "losses=[{name: ce}, {name: energy_margin, weight: 0.1, margin_in: -8.0, margin_out: -2.0}]",
            _OE_OUTLIERS,
        ],
        ["energy", "msp", "maxlogit", "maxentropy"],
    ),
    "oe_void": (
        ["num_classes=20", "losses=[{name: ce}, {name: outlier_void}]", _OE_OUTLIERS],
        ["void", "energy", "msp", "maxlogit", "maxentropy"],
    ),
    "oe_entropy": (
        ["losses=[{name: ce}, {name: outlier_entropy, weight: 0.5}]", _OE_OUTLIERS],
        ["energy", "msp", "maxlogit", "maxentropy"],
    ),
}
TITLES = {
    "ce": "ERFNet, CE",
    "void": "ERFNet, void classifier",
    "logitnorm_ce": "ERFNet, LogitNorm + CE",
    "isomax_ce": "ERFNet, IsoMax+ + CE",
    "oe_energy": "ERFNet, CE + energy margin on pasted outliers (OE)",
    "oe_void": "ERFNet, void classifier with pasted outliers as void (OE)",
    "oe_entropy": "ERFNet, CE + entropy maximisation on pasted outliers (OE)",
}


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "anomaly_seg_ros.tools.cli", *args]
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def _drop_inapplicable_rows(table: str) -> str:
    """Table rows of a scorer that does not apply to that model have no metric at all: leave them out."""
    kept = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 3 and all(cell == "–" for cell in cells[3:]):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="Cityscapes-layout training set")
    parser.add_argument("--eval", required=True, type=Path, help="folder with anomaly/ and cityscapes/")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--doc", type=Path, help="Markdown file for the table (default: OUT/table.md only)")
    parser.add_argument("--config", default="config/train_synthetic.yaml")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=40, help="optimiser steps per epoch (0 = all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra training setting, e.g. threads=1"
    )
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoints, scorers, minutes = [], [], {}
    for name in args.variants:
        overrides, variant_scorers = VARIANTS[name]
        run_dir = args.out / name
        best = run_dir / "best.safetensors"
        if not best.exists():
            started = time.perf_counter()
            sets = [
                f"epochs={args.epochs}",
                f"max_steps_per_epoch={args.steps_per_epoch}",
                "class_weights=enet",
                "tensorboard=false",
                *overrides,
                *args.set,
            ]
            _cli(
                "train",
                "--config",
                args.config,
                "--data",
                str(args.data),
                "--out",
                str(run_dir),
                "--no-progress",
                *[item for value in sets for item in ("--set", value)],
            )
            minutes[name] = (time.perf_counter() - started) / 60.0
        # evaluate names rows by the checkpoint's file stem
        named = args.out / "checkpoints" / f"erfnet_{name}.safetensors"
        named.parent.mkdir(exist_ok=True)
        shutil.copyfile(best, named)
        checkpoints.append(str(named))
        scorers += [s for s in variant_scorers if s not in scorers]

    _cli(
        "evaluate",
        *[item for path in checkpoints for item in ("--checkpoint", path)],
        *[item for name in scorers for item in ("--scorer", name)],
        "--dataset",
        f"synthetic:{args.eval / 'anomaly'}",
        "--segmentation",
        str(args.eval / "cityscapes"),
        "--exact-pixels",
        "8000000",
        "--out",
        str(args.out / "eval"),
        "--no-progress",
    )
    table = _drop_inapplicable_rows((args.out / "eval" / "table.md").read_text(encoding="utf-8"))
    table = table.replace("# Anomaly segmentation evaluation", "## Results", 1)
    (args.out / "minutes.json").write_text(json.dumps(minutes, indent=2))
    if args.doc:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
        args.doc.write_text(
            "# Seed 000 Table 4 on synthetic scenes: training losses\n\n"
            f"ERFNet trained from scratch with each loss ({args.epochs} epochs x {args.steps_per_epoch} steps of "
            "batch 8 at 128x256, ENet class weights, seed 0), evaluated on held-out synthetic scenes.\n\n"
            f"Made with:\n\n```bash\n{command}\n```\n\n" + table,
            encoding="utf-8",
        )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The evaluation grid on the real benchmark data: writes docs/real_benchmarks.md (``make eval-real``).

Runs the authors' ENet checkpoint (a bare ``.pth`` state_dict, loaded as a user would load it)
through ``anomaly-seg fit-scorer`` (SML, FlowEneDet on the Cityscapes sample: the only
in-distribution images there are) and ``anomaly-seg evaluate`` over the five anomaly sets of
``../shared/realdata`` (kinds detected with ``auto:``) and the Cityscapes sample for mIoU, then
writes the seed-layout table with chance levels, the exact commands and the time they took.

Nothing of the real data is copied: fits and cells go to ``--work`` (default /tmp/eval_real),
the checkpoint is linked there so that the fits sit next to it.

    python benchmarks/real_data.py [--realdata ../shared/realdata] [--input-size 512 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = ("RoadAnomaly_jpg", "RoadAnomaly21", "RoadObsticle21", "fs_static", "FS_LostFound_subset")
CHECKPOINT = "checkpoints/enet_void_yurnero14.pth"
SEGMENTATION = "cityscapes_mmseg_sample"
FITTED = ("sml", "flowenedet")
PGU_P = (0.1, 0.3, 0.5, 1, 2)
SCORERS = ("msp", "maxlogit", "maxentropy", "energy", "void", *(f"pgu@p={p}" for p in PGU_P), *FITTED)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _run(argv: list[str]) -> tuple[int, float]:
    from anomaly_seg_ros.tools.cli import main

    print("$ anomaly-seg " + shlex.join(argv), flush=True)
    started = time.perf_counter()
    code = main(argv)
    return code, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    parser.add_argument("--work", type=Path, default=Path("/tmp/eval_real"))
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "real_benchmarks.md")
    args = parser.parse_args()
    if not (args.realdata / CHECKPOINT).is_file():
        print(f"real data not found: {args.realdata / CHECKPOINT}; see the README of ../shared/realdata")
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / Path(CHECKPOINT).name
    if not checkpoint.exists():
        checkpoint.symlink_to((args.realdata / CHECKPOINT).resolve())
    size = f"model.input_size=[{args.input_size[0]}, {args.input_size[1]}]"
    segmentation = args.realdata / SEGMENTATION
    started = time.perf_counter()
    commands, notes = [], []
    load_before = os.getloadavg()
    for name in FITTED:
        if checkpoint.with_name(f"{checkpoint.stem}.{name}.safetensors").is_file():
            notes.append(f"`fit-scorer {name}`: reused the fit in {args.work}")
            continue
        argv = ["fit-scorer", name, "--checkpoint", str(checkpoint), "--data", str(segmentation), "--split", "val"]
        argv += ["--no-progress"]
        code, seconds = _run(argv)
        commands.append(argv)
        notes.append(f"`fit-scorer {name}`: exit {code} in {seconds:.0f} s")
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--scorer", *SCORERS]
    argv += ["--dataset", *(f"auto:{args.realdata / name}" for name in SETS)]
    argv += ["--segmentation", str(segmentation), "--set", size, "--out", str(args.work / "grid"), "--no-progress"]
    code, seconds = _run(argv)
    commands.append(argv)
    notes.append(f"`evaluate`: exit {code} in {seconds:.0f} s")
    if code != 0:
        return code
    total = time.perf_counter() - started
    load = f"load average {load_before[1]:.1f} before, {os.getloadavg()[1]:.1f} after (5-minute)"
    results = json.loads((args.work / "grid" / "results.json").read_text())
    table = (args.work / "grid" / "table.md").read_text().split("\n", 2)[2]  # drop its title
    best = []
    for key, item in results["datasets"].items():
        pgu = [
            (row["datasets"][key]["summary"]["ap"], row["params"]["p"])
            for row in results["rows"]
            if row["name"] == "pgu" and row["datasets"][key].get("summary")
        ]
        if pgu:
            ap, p = max(pgu)
            best.append(f"{item['title']}: p = {p:g} (AuPRC {100 * ap:.2f} %)")
    shown = "\n".join(
        "anomaly-seg " + shlex.join(a).replace(str(args.realdata), "../shared/realdata") for a in commands
    )
    import torch

    lines = [
        "# Real-data benchmarks: the authors' ENet (void class) on the five anomaly validation sets",
        "",
        f"Checkpoint: `realdata/{CHECKPOINT}` (bare state_dict, `module.` prefix; ENet with 20 classes, void = 19, "
        "RGB 0..1 input, no normalisation: the registry defaults that `load_model` states when it loads it). "
        f"Network input {args.input_size[0]}×{args.input_size[1]}; scores are taken at each image's own size. "
        "Data: `../shared/realdata` (see its README for provenance and licences; nothing of it is in this "
        "repository). mIoU is over the 19 Cityscapes classes of the one Cityscapes sample image there "
        "(256×128), so it is a smoke figure, not the checkpoint's 63.6 % val mIoU.",
        "",
        f"Generated by `make eval-real` (`python benchmarks/real_data.py --input-size {args.input_size[0]} "
        f"{args.input_size[1]}`) on this {_cpu_name()} machine ({_cpu_count()} cores, shared with other "
        f"sessions: {load}), torch {torch.__version__}, Python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}: {total / 60:.1f} min in all "
        f"({'; '.join(notes)}). Finished cells in `{args.work}/grid` are reused by a re-run.",
        "",
        table.rstrip(),
        "",
        "## Notes",
        "",
        "- PGU is evaluated at p in {"
        + ", ".join(f"{p:g}" for p in PGU_P)
        + "} (seed 001); best p per set: "
        + ("; ".join(best) or "none")
        + ".",
        "- SML and FlowEneDet are fitted on the single Cityscapes sample image (the only in-distribution "
        "labelled image available), so their rows show that the path runs, not what a full fit reaches.",
        "- Chance AuPRC is the anomaly pixel ratio listed under the table; the seed paper's Table 1 sits at "
        "these levels (see the realdata README), which a correct pipeline beats by a wide margin.",
        "",
        "## Exact commands",
        "",
        "```bash",
        shown,
        "```",
        "",
    ]
    args.doc.write_text("\n".join(lines))
    print(f"wrote {args.doc} in {total / 60:.1f} min")
    return 0


def _cpu_count() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())

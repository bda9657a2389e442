"""The project's CPU path against its peers: plain eager, ``auto``, ONNX Runtime and OpenVINO, interleaved.

In one process, at each network input size: plain eager PyTorch (fp32, contiguous), the
project's ``model.backend: auto`` as the pipeline selects it, and every installed ONNX runtime
asked for explicitly, all on the same ERFNet weights and the same input. Each round times every
backend once, in turn, so all see the same machine load; the figures are p50/p99 over the
rounds and ratios of p50s. ``eager`` is the project's eager backend (channels-last), what
``auto`` falls back to without the runtimes. It also checks every backend against eager (largest absolute logit
difference, share of equal labels), and reports the target of issue 14: ``auto`` within 1.1x
of the fastest fp32 runtime measured in the same run, judged by the median over rounds of
auto's time over the fastest peer's in the same round (the p50 ratio is shown too).

    python benchmarks/cpu_runtimes.py --sizes 256x512 512x1024 --rounds 40 15 --readme benchmarks/README.md

With ``--readme`` the table replaces the block between the ``cpu-runtimes`` markers there.
The thread policy is the entry points' (inference/threads.py): set before torch loads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

from anomaly_seg_ros.inference.threads import apply_wait_policy

apply_wait_policy()  # before torch loads (see inference/threads.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anomaly_seg_ros.benchmarking.speed import machine_info  # noqa: E402
from anomaly_seg_ros.inference.backends import BackendRequest, select_backend  # noqa: E402
from anomaly_seg_ros.inference.cpu_runtimes import runtime_installed  # noqa: E402
from anomaly_seg_ros.inference.threads import configure_threads, wait_policy  # noqa: E402
from anomaly_seg_ros.models import build_model  # noqa: E402

TARGET = 1.1
MARKERS = ("<!-- cpu-runtimes:start -->", "<!-- cpu-runtimes:end -->")


def measure(size: tuple[int, int], rounds: int, warmup: int, model_name: str) -> dict:
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=19).eval()
    plain = copy.deepcopy(model)
    candidates = {"eager (plain, fp32)": None, "auto": "auto", "eager": "eager"}
    for runtime in ("onnxruntime", "openvino"):
        if runtime_installed(runtime):
            candidates[runtime] = runtime
    runners = {}
    described = {}
    for label, backend in candidates.items():
        if backend is None:
            runners[label] = plain
            described[label] = "eager, contiguous NCHW, fp32"
            continue
        built = select_backend(copy.deepcopy(model), BackendRequest(backend=backend, input_size=size, fallback=False))
        runners[label] = built
        described[label] = built.describe()
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    samples: dict[str, list[float]] = {label: [] for label in runners}
    agreement = {}
    with torch.inference_mode():
        reference = plain(x)
        for label, runner in runners.items():
            logits = runner(x)
            agreement[label] = {
                "max_abs_logit_diff": float((logits - reference).abs().max()),
                "label_agreement": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
            }
        for index in range(warmup + rounds):
            for label, runner in runners.items():
                start = time.perf_counter()
                runner(x)
                if index >= warmup:
                    samples[label].append((time.perf_counter() - start) * 1000.0)
    stats = {
        label: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} for label, v in samples.items()
    }
    eager = stats["eager (plain, fp32)"]["p50"]
    fastest = min((label for label in stats if label != "auto"), key=lambda label: stats[label]["p50"])
    auto_ratio = stats["auto"]["p50"] / stats[fastest]["p50"]
    # Paired: auto over the fastest within each round, then the median over rounds. The load of a
    # shared machine drifts within seconds; a round's samples are taken within one of them.
    paired = float(np.median(np.asarray(samples["auto"]) / np.asarray(samples[fastest])))
    return {
        "size": list(size),
        "backends": {
            label: {
                **stats[label],
                "vs_eager": stats[label]["p50"] / eager,
                "describe": described[label],
                **agreement[label],
            }
            for label in runners
        },
        "fastest": fastest,
        "auto_over_fastest": auto_ratio,
        "auto_over_fastest_paired": paired,
        "rounds": rounds,
        "meets_target": bool(paired <= TARGET),
    }


def markdown(results: list[dict], machine: dict, load: tuple, command: str) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, OMP_WAIT_POLICY={wait_policy()}; shared with other users: load "
        f"average {load[0]:.1f} at start, {load[1]:.1f} at end. Every round times each backend once, in turn.",
        "",
        f"`{command}`",
        "",
        "| input | backend | p50 ms | p99 ms | p50 ÷ plain eager | max \\|Δlogit\\| vs eager | labels equal |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        size = "×".join(map(str, result["size"]))
        for label, entry in result["backends"].items():
            name = f"{label}: {entry['describe']}" if label in ("auto", "eager") else label
            lines.append(
                f"| {size} | {name} | {entry['p50']:.1f} | {entry['p99']:.1f} | {entry['vs_eager']:.2f} | "
                f"{entry['max_abs_logit_diff']:.1e} | {100 * entry['label_agreement']:.2f} % |"
            )
    lines += [
        "",
        f"| input | rounds | fastest fp32 peer | auto ÷ fastest, p50s | per-round median | target ≤ {TARGET} |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for result in results:
        size = "×".join(map(str, result["size"]))
        verdict = "met" if result["meets_target"] else "**missed**"
        lines.append(
            f"| {size} | {result['rounds']} | {result['fastest']} | {result['auto_over_fastest']:.2f} | "
            f"{result['auto_over_fastest_paired']:.2f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_readme(path: Path, text: str) -> None:
    readme = path.read_text(encoding="utf-8")
    start, end = MARKERS
    block = f"{start}\n{text}{end}"
    if start in readme and end in readme:
        readme = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, readme, flags=re.S)
    else:
        readme += f"\n{block}\n"
    path.write_text(readme, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x512", "512x1024"], help="network inputs HxW")
    parser.add_argument("--rounds", type=int, nargs="+", default=[10], help="rounds, one value or one per size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="erfnet")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = the policy's default)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--readme", type=Path, help="replace the cpu-runtimes block of this Markdown file")
    args = parser.parse_args()
    configure_threads(args.threads)
    sizes = [tuple(int(v) for v in text.lower().split("x")) for text in args.sizes]
    load_start = os.getloadavg()[0]
    rounds = args.rounds * len(sizes) if len(args.rounds) == 1 else args.rounds
    if len(rounds) != len(sizes):
        parser.error(f"--rounds: give one value or one per size ({len(sizes)}), got {len(args.rounds)}")
    results = [measure(size, count, args.warmup, args.model) for size, count in zip(sizes, rounds, strict=True)]
    load_end = os.getloadavg()[0]
    machine = machine_info(torch.device("cpu"))
    command = "python benchmarks/cpu_runtimes.py " + " ".join(sys.argv[1:])
    text = markdown(results, machine, (load_start, load_end), command)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n", encoding="utf-8")
    if args.readme:
        write_readme(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

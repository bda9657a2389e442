"""Which thread policy holds under contention: threads x OpenMP wait policy x backend, interleaved.

Each configuration (backend, intra-op threads, OMP_WAIT_POLICY) runs in its own worker process,
because OpenMP reads its wait policy when torch loads. The driver keeps every worker paused
(SIGSTOP) except the one it is timing, so an idle worker's spinning threads cannot steal the
CPU from the others, and it starts N busy neighbour processes itself, paused and resumed
around alternate rounds (anomaly_seg_ros/benchmarking/contention.py). Per iteration: every
worker once with the neighbours paused, then every worker once with them running. So all
configurations and both conditions see the same background load, and all ratios are taken
in one run.

    OMP_NUM_THREADS= python benchmarks/thread_policy.py --input-size 512 1024 --neighbours 2 \
        --iterations 10 --markdown thread_policy.md

Prints a Markdown table: idle and contended p50/p99 per configuration, contended ÷ idle, the
fair-share target (N + threads) / threads, and each configuration's idle p50 relative to the
default policy's (same run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER_FLAG = "--worker"


def worker(spec: dict) -> None:
    """Build the network with ``spec``'s backend and threads; time one forward per line read from stdin."""
    import torch

    from anomaly_seg_ros.inference.backends import BackendRequest, select_backend
    from anomaly_seg_ros.inference.threads import configure_threads
    from anomaly_seg_ros.models import build_model

    threads = configure_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(spec["model"], num_classes=19).eval()
    request = BackendRequest(backend=spec["backend"], input_size=tuple(spec["input_size"]), fallback=False)
    backend = select_backend(model, request)
    example = torch.rand(request.input_shape, generator=torch.Generator().manual_seed(1))
    print(json.dumps({"ready": backend.describe(), "threads": threads}), flush=True)
    with torch.inference_mode():
        for _ in sys.stdin:
            start = time.perf_counter()
            backend(example)
            print((time.perf_counter() - start) * 1000.0, flush=True)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        worker(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="erfnet")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--backends", default="eager", help="comma-separated backends")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--policies", default="ACTIVE,PASSIVE", help="comma-separated OMP_WAIT_POLICY values")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    from anomaly_seg_ros.benchmarking.contention import (
        CONTENTION_HEADER,
        busy_neighbours,
        contention_markdown,
        contention_report,
    )
    from anomaly_seg_ros.benchmarking.speed import machine_info
    from anomaly_seg_ros.inference.threads import DEFAULT_WAIT_POLICY, default_threads

    configs = [
        {"backend": b, "threads": int(t), "policy": p, "model": args.model, "input_size": list(args.input_size)}
        for b in args.backends.split(",")
        for p in args.policies.split(",")
        for t in args.threads.split(",")
    ]
    workers = []
    try:
        for config in configs:
            env = {**os.environ, "OMP_WAIT_POLICY": config["policy"], "OMP_NUM_THREADS": str(config["threads"])}
            process = subprocess.Popen(
                [sys.executable, __file__, WORKER_FLAG, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            ready = json.loads(process.stdout.readline())
            process.send_signal(signal.SIGSTOP)
            workers.append((config, process, ready))
            print(f"ready: {config} -> {ready['ready']}", file=sys.stderr, flush=True)
        samples = {id(p): {"idle": [], "contended": []} for _, p, _ in workers}
        load_start = os.getloadavg()
        with busy_neighbours(args.neighbours) as crowd:
            for index in range(args.warmup + args.iterations):
                for condition in ("idle", "contended"):
                    if condition == "contended":
                        crowd.resume()
                    for _, process, _ in workers:
                        process.send_signal(signal.SIGCONT)
                        process.stdin.write("go\n")
                        process.stdin.flush()
                        elapsed = float(process.stdout.readline())
                        process.send_signal(signal.SIGSTOP)
                        if index >= args.warmup:
                            samples[id(process)][condition].append(elapsed)
                    if condition == "contended":
                        crowd.pause()
        load_end = os.getloadavg()
    finally:
        for _, process, _ in workers:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()

    import torch

    reports = []
    for config, process, ready in workers:
        report = contention_report(
            samples[id(process)]["idle"],
            samples[id(process)]["contended"],
            neighbours=args.neighbours,
            threads=ready["threads"],
        )
        reports.append({"config": config, "backend": ready["ready"], **report})
    default = next(
        (
            r
            for r in reports
            if r["config"]["policy"] == DEFAULT_WAIT_POLICY and r["config"]["threads"] == default_threads({})
        ),
        reports[0],
    )
    machine = machine_info(torch.device("cpu"))
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['torch']}; "
        f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end (other users of the machine)",
        f"Network {args.model} {args.input_size[0]}x{args.input_size[1]}, {args.neighbours} busy neighbours, "
        f"{args.iterations} samples per condition, interleaved",
        "",
        *[
            line.replace("| target p50 | met |", "| target p50 | met | idle p50 vs default |")
            for line in CONTENTION_HEADER[:1]
        ],
        CONTENTION_HEADER[1] + " ---: |",
    ]
    for report in reports:
        config = report["config"]
        label = f"{config['backend']}, OMP_WAIT_POLICY={config['policy']}"
        row = contention_markdown(report, label)[0]
        lines.append(row + f" {report['idle_ms']['p50'] / default['idle_ms']['p50']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "reports": reports}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

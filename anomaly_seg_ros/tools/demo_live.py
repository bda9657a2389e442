"""The demo's live part: anomaly_seg_node on a real ROS 2 graph, recorded to an mcap bag.

A player (rclpy + rosbags) publishes the synthetic drive in real time; ``anomaly_seg_node``
runs in its own process, started by its console entry point with the demo's configuration
as a parameter file; a recorder writes the camera topics and everything the node publishes
to ``bags/drive_live`` (mcap). From that recording come a summary (frames in and out,
drops, latency from each output's arrival minus its input frame's arrival, alerts) and an animated
GIF of the node's overlays with its alert boxes. Where ROS 2 is not installed this says so
in one line and the demo goes on with the offline replay alone.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from anomaly_seg_ros.core.config import PerceptionConfig
from anomaly_seg_ros.replay.bagio import iter_messages
from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics
from anomaly_seg_ros.ros import messages
from anomaly_seg_ros.ros.conversions import image_to_array, stamp_to_ns
from anomaly_seg_ros.ros.parameters import parameters_from_config

NODE = "/anomaly_seg_node"
DIAGNOSTICS = "/diagnostics"
GIF_FRAMES = 40


def ros_unavailable() -> str | None:
    """Why the live graph cannot run here, or None."""
    for module, hint in (("rclpy", "run scripts/setup.sh or source a ROS 2"), ("anomaly_seg_msgs", "build msg/")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({hint})"
    return None


def _params_file(path: Path, config: PerceptionConfig, camera_height_m: float) -> Path:
    values = parameters_from_config(config) | {"ground.camera_height_m": camera_height_m}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}, sort_keys=True))
    return path


def run_live(bag: Path, out: Path, config: PerceptionConfig, *, camera_height_m: float) -> dict | None:
    """Play ``bag`` to the node, record its outputs; returns the live summary (None without ROS)."""
    reason = ros_unavailable()
    if reason:
        print(f"[live] ROS 2 graph skipped: {reason}; the offline replay below runs the same pipeline")
        return None
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from anomaly_seg_ros.ros.graph import BagPlayer, BagRecorder

    topics = SequenceTopics()
    live_dir = out / "live"
    live_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.update({key: env[key] for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    command = [
        str(Path(sys.executable).parent / "anomaly_seg_node"),
        "--ros-args",
        "--params-file",
        str(_params_file(live_dir / "params.yaml", config, camera_height_m)),
        "-r",
        f"image:={topics.image}",
        "-r",
        f"camera_info:={topics.camera_info}",
    ]
    log_path = live_dir / "node.log"
    recording = out / "bags" / "drive_live"
    with open(log_path, "w") as log:
        node_proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    rclpy.init()
    node = rclpy.create_node("anomaly_seg_demo")
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        recorded = {topics.image: messages.IMAGE, topics.camera_info: "sensor_msgs/msg/CameraInfo"}
        recorded |= {topics.ground_truth: messages.IMAGE, DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray"}
        recorded |= messages.output_topics(NODE)
        deadline = time.monotonic() + 120
        while node.count_subscribers(topics.image) == 0:
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"anomaly_seg_node did not start; see {log_path}:\n{log_path.read_text()}")
            time.sleep(0.1)
        print(f"[live] anomaly_seg_node is up (pid {node_proc.pid}); playing {bag} in real time, recording")
        with BagRecorder(node, recording, recorded) as recorder:
            player = BagPlayer(node, bag)
            time.sleep(0.5)
            started = time.monotonic()
            player.play(rate=1.0)
            played_s = time.monotonic() - started
            time.sleep(2.0)  # the last frames' outputs
            counts = dict(recorder.counts)
    finally:
        if node_proc.poll() is None:
            node_proc.send_signal(signal.SIGINT)
        returncode = node_proc.wait(30)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    summary = summarise_recording(recording, topics)
    summary |= {"recording": str(recording), "played_s": played_s, "node_exit_status": returncode, "counts": counts}
    summary["gif"] = str(write_overlay_gif(recording, live_dir / "overlay.gif"))
    return summary


def summarise_recording(recording: Path, topics: SequenceTopics | None = None) -> dict:
    """Frames in and out, latency (arrival - input stamp), alerts and the node's last diagnostics."""
    topics = topics or SequenceTopics()
    inputs, frames_out, latencies_ms, alerts, frames_with_alerts, last_status = 0, 0, [], 0, 0, {}
    alert_topic = f"{NODE}/{messages.OBSTACLE_ALERTS}"
    # The bag's stamps are from its recording day: latency is the output's arrival minus the
    # arrival of the input frame with the same stamp, both on the recorder's clock.
    arrived: dict[int, int] = {}
    for message in iter_messages(recording, [topics.image, alert_topic, DIAGNOSTICS]):
        if message.topic == topics.image:
            inputs += 1
            arrived[stamp_to_ns(message.msg.header)] = message.timestamp_ns
        elif message.topic == alert_topic:
            stamp = stamp_to_ns(message.msg.header)
            if stamp in arrived:
                latencies_ms.append((message.timestamp_ns - arrived[stamp]) / 1e6)
            frames_out += 1
            alerts += len(message.msg.alerts)
            frames_with_alerts += bool(message.msg.alerts)
        else:
            for status in message.msg.status:
                if status.name.endswith(": pipeline"):
                    last_status = {kv.key: kv.value for kv in status.values}
    latency = np.asarray(latencies_ms) if latencies_ms else np.zeros(1)
    return {
        "frames_published": inputs,
        "frames_out": frames_out,
        "frames_dropped_by_node": int(last_status.get("frames dropped", 0)),
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p95": float(np.percentile(latency, 95)),
        "alerts": alerts,
        "frames_with_alerts": frames_with_alerts,
        "node_diagnostics": last_status,
    }


def write_overlay_gif(recording: Path, path: Path, *, width: int = 512) -> Path | None:
    """An animated GIF of the recorded overlays with the recorded alert boxes drawn on them."""
    try:
        from PIL import Image as PILImage
    except ImportError:
        return None
    overlay_topic, alert_topic = f"{NODE}/{messages.ANOMALY_OVERLAY}", f"{NODE}/{messages.OBSTACLE_ALERTS}"
    overlays, boxes = {}, {}
    for message in iter_messages(recording, [overlay_topic, alert_topic]):
        stamp = stamp_to_ns(message.msg.header)
        if message.topic == overlay_topic:
            overlays[stamp] = image_to_array(message.msg)
        else:
            boxes[stamp] = [
                (a.roi.x_offset, a.roi.y_offset, a.roi.width, a.roi.height, a.distance_m) for a in message.msg.alerts
            ]
    stamps = sorted(overlays)
    if not stamps:
        return None
    stamps = [stamps[i] for i in np.linspace(0, len(stamps) - 1, min(GIF_FRAMES, len(stamps))).round().astype(int)]
    frames = []
    for stamp in stamps:
        image = np.ascontiguousarray(overlays[stamp])
        for x, y, w, h, distance in boxes.get(stamp, []):
            cv2.rectangle(image, (x, y), (x + w, y + h), (255, 255, 0), 2)
            if distance > 0:
                cv2.putText(
                    image, f"{distance:.0f} m", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1
                )
        scale = width / image.shape[1]
        frames.append(PILImage.fromarray(cv2.resize(image, (width, round(image.shape[0] * scale)))))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)
    return path


def markdown(summary: dict) -> str:
    return "\n".join(
        [
            "## Live ROS 2 graph (player -> anomaly_seg_node -> recorder)",
            "",
            f"- recording: `{summary['recording']}`; overlay animation: `{summary['gif']}`",
            f"- frames published {summary['frames_published']} in {summary['played_s']:.1f} s, "
            f"frames out {summary['frames_out']}, dropped by the node (latest-frame slot) "
            f"{summary['frames_dropped_by_node']}",
            f"- latency (alerts' arrival - the input frame's arrival): p50 {summary['latency_ms_p50']:.0f} ms, "
            f"p95 {summary['latency_ms_p95']:.0f} ms",
            f"- alerts {summary['alerts']} in {summary['frames_with_alerts']} frames; "
            f"node exit status {summary['node_exit_status']}",
            "",
        ]
    )

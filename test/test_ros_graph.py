"""anomaly_seg_node on a real ROS 2 graph (Fast DDS), in its own process, started as a user starts it.

A bag player on rclpy + rosbags publishes the synthetic drive; an rclpy probe subscribes to
every output. Each test asserts what the running node did against an independent account:
the bag's stamps, the bag tool's replay of the same bag with the same configuration, the
conversions' reasons for the same malformed messages, and what the probe itself observed.
Skipped only where no ROS 2 exists (scripts/setup.sh installs the pip wheels on x86_64).
"""

from __future__ import annotations

import array
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import NodeProcess, RosGraph, node_args, ros_skip_reason

REASON = ros_skip_reason()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from anomaly_seg_msgs.msg import ObstacleAlertArray  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from anomaly_seg_ros.common.errors import MessageConversionError  # noqa: E402
from anomaly_seg_ros.core.config import load_config  # noqa: E402
from anomaly_seg_ros.core.perception import Perception  # noqa: E402
from anomaly_seg_ros.data.synthetic import camera_intrinsics  # noqa: E402
from anomaly_seg_ros.models import build_model, save_checkpoint  # noqa: E402
from anomaly_seg_ros.replay import ReplayOptions, replay_bag  # noqa: E402
from anomaly_seg_ros.replay.bagio import iter_messages  # noqa: E402
from anomaly_seg_ros.replay.synthetic_bag import SequenceTopics, write_sequence_bag  # noqa: E402
from anomaly_seg_ros.ros import messages  # noqa: E402
from anomaly_seg_ros.ros.conversions import image_to_array, message_to_rgb  # noqa: E402
from anomaly_seg_ros.ros.graph import BagPlayer  # noqa: E402

TOPICS = SequenceTopics()
NODE = "/anomaly_seg_node"
REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "checkpoints" / "erfnet_synthetic.safetensors"
FRAMES, HEIGHT, WIDTH, FPS = 6, 96, 192, 10.0
ENCODINGS = {
    messages.SEMANTIC_MASK: ("mono8", 1),
    messages.SEMANTIC_COLOR: ("rgb8", 3),
    messages.ANOMALY_HEATMAP: ("32FC1", 4),
    messages.ANOMALY_OVERLAY: ("rgb8", 3),
}
#: Subscriptions of the probe: reliable matches the node's reliable publishers.
PROBE_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
#: The fast node's camera topic: apart from the demo-model node, which runs for the whole module.
FAST_IMAGE = "/fast/image_raw"
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def _ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def graph():
    ros = RosGraph()
    yield ros
    ros.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ros_graph")
    bag = write_sequence_bag(root / "drive", seed=0, num_frames=FRAMES, height=HEIGHT, width=WIDTH, fps=FPS)
    random_weights = root / "erfnet_random.safetensors"
    calibration = {"energy": {"threshold": -3.5, "range": [-9.0, -2.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19),
        random_weights,
        metadata={"input_size": [32, 64], "calibration": calibration},
    )
    frames = [m.msg for m in iter_messages(bag, [TOPICS.image])]
    return {"root": root, "bag": bag, "random_weights": random_weights, "frames": frames}


class Outputs:
    """Everything the node publishes, as received by the probe."""

    def __init__(self, graph: RosGraph, namespace: str = NODE) -> None:
        self.graph = graph
        #: Several nodes share /diagnostics: only this node's status counts.
        self.status_name = f"{namespace.strip('/')}: pipeline"
        self.lock = threading.Lock()
        self.msgs: dict[str, list] = {name: [] for name in messages.OUTPUT_TYPES}
        self.arrivals: dict[str, list[float]] = {name: [] for name in messages.OUTPUT_TYPES}
        self.diagnostics: list[DiagnosticArray] = []
        self.diagnostics_at: list[float] = []
        self.subscriptions = []
        for name in messages.OUTPUT_TYPES:
            kind = ObstacleAlertArray if name == messages.OBSTACLE_ALERTS else Image
            self.subscriptions.append(
                graph.node.create_subscription(
                    kind, f"{namespace}/{name}", lambda msg, name=name: self._add(name, msg), PROBE_QOS
                )
            )
        self.subscriptions.append(
            graph.node.create_subscription(DiagnosticArray, "/diagnostics", self._add_diagnostics, 50)
        )

    def _add(self, name: str, msg) -> None:
        with self.lock:
            self.msgs[name].append(msg)
            self.arrivals[name].append(time.time())

    def _add_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.append(msg)
            self.diagnostics_at.append(time.monotonic())

    def stamps(self, name: str) -> list[int]:
        with self.lock:
            return [_ns(msg.header) for msg in self.msgs[name]]

    def status(self, after: float = 0.0) -> dict[str, str]:
        """Key/values of the node's latest pipeline status (received after monotonic time ``after``)."""
        with self.lock:
            for array_msg, arrived in zip(reversed(self.diagnostics), reversed(self.diagnostics_at), strict=True):
                if arrived < after:
                    break
                for status in array_msg.status:
                    if status.name == self.status_name:
                        return {kv.key: kv.value for kv in status.values} | {"message": status.message}
        return {}

    def wait_status(self, predicate, timeout: float, what: str) -> dict[str, str]:
        self.graph.wait_for(lambda: predicate(self.status()), timeout, what)
        return self.status()

    def clear(self) -> None:
        with self.lock:
            for name in self.msgs:
                self.msgs[name].clear()
                self.arrivals[name].clear()

    def destroy(self) -> None:
        for subscription in self.subscriptions:
            self.graph.node.destroy_subscription(subscription)


def _count(status: dict[str, str], key: str) -> int:
    return int(status.get(key, "0"))


def _start(
    graph: RosGraph, tmp: Path, name: str, parameters: dict, remaps: dict | None = None, node_name: str | None = None
) -> NodeProcess:
    """Start the node and wait until its image subscription is on the graph."""
    remaps = {
        "image": TOPICS.image,
        "image/compressed": f"{TOPICS.image}/compressed",
        "camera_info": TOPICS.camera_info,
    } | (remaps or {})
    args = node_args(parameters, remaps) + (["-r", f"__node:={node_name}"] if node_name else [])
    node = NodeProcess(args, tmp / f"{name}.log")
    topic = remaps["image/compressed"] if parameters.get("input.compressed") else remaps["image"]
    graph.wait_for(
        lambda: graph.node.count_subscribers(topic) > 0 or node.proc.poll() is not None,
        45,
        f"{name} subscribing to {topic}",
    )
    assert node.proc.poll() is None, node.output
    return node


def _assert_clean_exit(node: NodeProcess, sig) -> None:
    returncode = node.stop(sig)
    output = node.output
    assert returncode == 0, output
    assert "Traceback" not in output and "[ERROR]" not in output and "[FATAL]" not in output, output


# -------------------------------------------- the demo model: outputs, alerts, parameters


@pytest.fixture(scope="module")
def live(graph, assets):
    """The demo checkpoint at a small input size; threshold from the data so that alerts exist."""
    camera = camera_intrinsics(0, height=HEIGHT, width=WIDTH)
    settings = {
        "model.weights": str(DEMO_CHECKPOINT),
        "model.input_size": [64, 128],
        "alerts.min_area_px": 4,
        "alerts.persistence_k": 1,
        "alerts.persistence_n": 1,
    }
    overrides = [f"{key}={value}" for key, value in settings.items()]
    probe = Perception.from_config(load_config(None, overrides))
    scores = np.concatenate([probe.process(message_to_rgb(m)).anomaly.ravel() for m in assets["frames"]])
    settings["alerts.threshold"] = float(np.quantile(scores, 0.97))
    overrides.append(f"alerts.threshold={settings['alerts.threshold']}")
    # The bag tool on the same bag with the same configuration: the reference of the node's outputs.
    replayed = assets["root"] / "replayed"
    replay_bag(
        assets["bag"],
        replayed,
        Perception.from_config(load_config(None, overrides)),
        ReplayOptions(camera_height_m=camera.mount_height),
    )
    reference = {name: {} for name in messages.OUTPUT_TYPES}
    for message in iter_messages(replayed, list(messages.output_topics(NODE))):
        reference[message.topic.rsplit("/", 1)[-1]][_ns(message.msg.header)] = message.msg
    outputs = Outputs(graph)
    node = _start(graph, assets["root"], "live", settings | {"ground.camera_height_m": camera.mount_height})
    yield {"node": node, "outputs": outputs, "reference": reference, "settings": settings}
    outputs.destroy()
    _assert_clean_exit(node, signal.SIGTERM)


def _play(graph: RosGraph, bag: Path, *, rate: float, topics=None) -> int:
    topics = topics or [TOPICS.image, TOPICS.camera_info]
    player = BagPlayer(graph.node, bag, topics=topics)
    graph.wait_for(lambda: player.publisher(topics[0]).get_subscription_count() > 0, 20, "the node to match")
    time.sleep(0.3)  # let the new publisher's discovery settle before the first frame
    count = player.play(rate=rate)
    return count


def test_every_output_carries_the_input_header_and_matches_the_bag_tool(graph, assets, live):
    outputs, reference = live["outputs"], live["reference"]
    # One camera_info first so that every frame, the first included, has ground distances.
    _play(graph, assets["bag"], rate=10.0, topics=[TOPICS.camera_info])
    # 2 frames per second: slower than the node, so no frame is dropped and the tracks match.
    _play(graph, assets["bag"], rate=0.2)
    input_stamps = sorted(_ns(m.header) for m in assets["frames"])
    graph.wait_for(
        lambda: all(sorted(outputs.stamps(name)) == input_stamps for name in messages.OUTPUT_TYPES),
        60,
        "every output of every frame",
    )
    for name, (encoding, pixel_bytes) in ENCODINGS.items():
        for msg in outputs.msgs[name]:
            assert msg.header.frame_id == TOPICS.frame_id
            assert (msg.encoding, msg.height, msg.width) == (encoding, HEIGHT, WIDTH), name
            assert msg.step == WIDTH * pixel_bytes and len(msg.data) == HEIGHT * msg.step
    # The same pipeline as `anomaly-seg bag`: identical masks, heatmaps and alerts per stamp.
    for msg in outputs.msgs[messages.SEMANTIC_MASK]:
        ref = reference[messages.SEMANTIC_MASK][_ns(msg.header)]
        np.testing.assert_array_equal(image_to_array(msg), image_to_array(ref))
    for msg in outputs.msgs[messages.ANOMALY_HEATMAP]:
        ref = reference[messages.ANOMALY_HEATMAP][_ns(msg.header)]
        np.testing.assert_allclose(image_to_array(msg), image_to_array(ref), rtol=1e-5, atol=1e-5)
    alerts = outputs.msgs[messages.OBSTACLE_ALERTS]
    assert sum(len(m.alerts) for m in alerts) > 0, "the threshold was chosen so that alerts exist"
    with_distance = 0
    for msg in alerts:
        ref = reference[messages.OBSTACLE_ALERTS][_ns(msg.header)]
        assert msg.header.frame_id == TOPICS.frame_id
        assert (msg.scorer, msg.threshold) == (ref.scorer, pytest.approx(ref.threshold))
        assert len(msg.alerts) == len(ref.alerts)
        first_frame = _ns(msg.header) == input_stamps[0]  # the bag tool has no camera_info before it
        for got, want in zip(msg.alerts, ref.alerts, strict=True):
            assert got.track_id == want.track_id and got.frames_seen == want.frames_seen
            roi = (got.roi.x_offset, got.roi.y_offset, got.roi.width, got.roi.height)
            assert roi == (want.roi.x_offset, want.roi.y_offset, want.roi.width, want.roi.height)
            assert got.area_px == want.area_px and got.in_drivable_area == want.in_drivable_area
            assert got.max_score == pytest.approx(want.max_score, rel=1e-5, abs=1e-5)
            if not first_frame:
                assert got.position_valid == want.position_valid
                assert got.distance_m == pytest.approx(want.distance_m, rel=1e-5)
                with_distance += got.position_valid and got.distance_m > 0
    assert with_distance > 0, "camera_info + ground.camera_height_m give alert distances"
    status = outputs.wait_status(lambda s: _count(s, "frames processed") >= FRAMES, 10, "diagnostics")
    assert _count(status, "frames received") == FRAMES and _count(status, "frames dropped") == 0


def _set(graph: RosGraph, *params: Parameter) -> list:
    client = AsyncParameterClient(graph.node, "anomaly_seg_node")
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.set_parameters(list(params))
    graph.wait_for(future.done, 10, "set_parameters")
    return list(future.result().results)


def _get(graph: RosGraph, *names: str) -> list:
    client = AsyncParameterClient(graph.node, "anomaly_seg_node")
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.get_parameters(list(names))
    graph.wait_for(future.done, 10, "get_parameters")
    return list(future.result().values)


def test_runtime_parameter_changes_take_effect_and_invalid_ones_change_nothing(graph, assets, live):
    outputs = live["outputs"]
    # A threshold above every score: the next frames carry it and have no alerts.
    (result,) = _set(graph, Parameter("alerts.threshold", value=1e9))
    assert result.successful, result.reason
    outputs.clear()
    _play(graph, assets["bag"], rate=0.5)
    graph.wait_for(lambda: len(outputs.msgs[messages.OBSTACLE_ALERTS]) >= 2, 30, "alerts after the change")
    for msg in outputs.msgs[messages.OBSTACLE_ALERTS]:
        assert msg.threshold == pytest.approx(1e9) and not msg.alerts
    # Another scorer: the alert messages name it from the next frame on.
    (result,) = _set(graph, Parameter("scorer.name", value="msp"))
    assert result.successful, result.reason
    outputs.clear()
    _play(graph, assets["bag"], rate=0.5)
    graph.wait_for(lambda: len(outputs.msgs[messages.OBSTACLE_ALERTS]) >= 2, 30, "alerts after the scorer change")
    assert {msg.scorer for msg in outputs.msgs[messages.OBSTACLE_ALERTS]} == {"msp"}
    # The far field (a second forward pass on a crop) switches on while the node runs.
    results = _set(graph, Parameter("far_field.zoom", value=2.0), Parameter("far_field.center", value=[0.5, 0.4]))
    assert all(result.successful for result in results), [result.reason for result in results]
    outputs.clear()
    _play(graph, assets["bag"], rate=0.5)
    graph.wait_for(lambda: len(outputs.msgs[messages.OBSTACLE_ALERTS]) >= 2, 30, "alerts with the far field on")
    # Invalid values: rejected with a reason naming the parameter; nothing changes.
    rejected = {
        "far_field.zoom": Parameter("far_field.zoom", value=0.5),
        "scorer.name": Parameter("scorer.name", value="no_such_scorer"),
        "alerts.track_iou": Parameter("alerts.track_iou", value=2.0),
        "model.device": Parameter("model.device", value="cuda"),
        "scorer.params": Parameter("scorer.params", value="[1, 2]"),
    }
    for name, param in rejected.items():
        (result,) = _set(graph, param)
        assert not result.successful and result.reason, name
    scorer, threshold, iou, device, zoom = _get(
        graph, "scorer.name", "alerts.threshold", "alerts.track_iou", "model.device", "far_field.zoom"
    )
    assert scorer.type == ParameterType.PARAMETER_STRING and scorer.string_value == "msp"
    assert threshold.double_value == pytest.approx(1e9)
    assert 0.0 <= iou.double_value < 1.0 and device.string_value == "cpu" and zoom.double_value == 2.0
    outputs.clear()
    _play(graph, assets["bag"], rate=0.5)
    graph.wait_for(lambda: len(outputs.msgs[messages.OBSTACLE_ALERTS]) >= 2, 30, "alerts after rejected changes")
    assert {(m.scorer, m.threshold) for m in outputs.msgs[messages.OBSTACLE_ALERTS]} == {("msp", 1e9)}


def _image(frame: Image, **changes) -> Image:
    msg = Image(header=frame.header, height=frame.height, width=frame.width, encoding=frame.encoding, step=frame.step)
    msg.data = array.array("B", bytes(frame.data))
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


def test_malformed_frames_are_counted_with_their_reason_and_the_node_keeps_going(graph, assets, live):
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    outputs = live["outputs"]
    raw = assets["frames"][0]
    good = Image(
        header=Header(stamp=Time(sec=raw.header.stamp.sec, nanosec=raw.header.stamp.nanosec), frame_id="cam"),
        height=raw.height,
        width=raw.width,
        encoding=raw.encoding,
        step=raw.step,
    )
    good.data = array.array("B", bytes(raw.data))
    bad = {
        "unknown encoding": _image(good, encoding="yuv_unknown"),
        "short data": _image(good, data=array.array("B", bytes(good.data)[: len(good.data) // 2])),
        "zero size": _image(good, height=0, width=0, step=0, data=array.array("B")),
    }
    expected: dict[str, int] = {}
    for msg in bad.values():
        with pytest.raises(MessageConversionError) as info:
            message_to_rgb(msg)
        expected[info.value.reason] = expected.get(info.value.reason, 0) + 1
    before = outputs.status()
    publisher = graph.node.create_publisher(Image, TOPICS.image, 10)
    graph.wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the node to match")
    time.sleep(0.3)
    for msg in bad.values():
        publisher.publish(msg)
        time.sleep(0.5)  # one at a time: the node keeps only the newest waiting frame
    status = outputs.wait_status(
        lambda s: _count(s, "messages rejected") >= _count(before, "messages rejected") + len(bad),
        20,
        "the rejections in /diagnostics",
    )
    for reason, count in expected.items():
        assert _count(status, f"rejected: {reason}") - _count(before, f"rejected: {reason}") == count, status
    assert status["last rejection reason"] in expected
    # And the node goes on: a good frame afterwards comes out.
    outputs.clear()
    good.header.stamp = Time(sec=123, nanosec=456)
    publisher.publish(good)
    graph.wait_for(lambda: 123 * 10**9 + 456 in outputs.stamps(messages.OBSTACLE_ALERTS), 20, "the good frame")
    graph.node.destroy_publisher(publisher)
    assert live["node"].proc.poll() is None


# -------------------------------------------------------------- compressed input, SIGINT


def test_compressed_input_and_corrupt_jpeg(graph, assets):
    node = _start(
        graph,
        assets["root"],
        "compressed",
        {"model.weights": str(assets["random_weights"]), "input.compressed": True, "diagnostics.period_s": 0.2},
        node_name="compressed_seg",
    )
    outputs = Outputs(graph, "/compressed_seg")
    publisher = graph.node.create_publisher(CompressedImage, f"{TOPICS.image}/compressed", 10)
    try:
        graph.wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the node to match")
        time.sleep(0.3)
        sent = []
        for frame in assets["frames"][:3]:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(message_to_rgb(frame), cv2.COLOR_RGB2BGR))
            assert ok
            msg = CompressedImage(format="jpeg", header=_image_header(frame))
            msg.data = jpeg.tobytes()
            publisher.publish(msg)
            sent.append(_ns(frame.header))
            time.sleep(0.4)
        graph.wait_for(lambda: sorted(outputs.stamps(messages.ANOMALY_HEATMAP)) == sent, 30, "compressed frames out")
        for msg in outputs.msgs[messages.SEMANTIC_MASK]:
            assert (msg.height, msg.width, msg.header.frame_id) == (HEIGHT, WIDTH, TOPICS.frame_id)
        corrupt = CompressedImage(format="jpeg", header=_image_header(assets["frames"][3]))
        corrupt.data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
        with pytest.raises(MessageConversionError) as info:
            message_to_rgb(corrupt)
        publisher.publish(corrupt)
        status = outputs.wait_status(lambda s: _count(s, "messages rejected") == 1, 20, "the corrupt JPEG counted")
        assert _count(status, f"rejected: {info.value.reason}") == 1 and _count(status, "frames processed") == 3
        # SIGINT while frames are being processed: a clean stop.
        stop = threading.Event()
        flood = threading.Thread(target=_flood, args=(publisher, assets["frames"], stop), daemon=True)
        flood.start()
        graph.wait_for(lambda: len(outputs.stamps(messages.ANOMALY_HEATMAP)) > 5, 30, "frames under way")
    finally:
        outputs.destroy()
    _assert_clean_exit(node, signal.SIGINT)
    stop.set()
    flood.join()
    graph.node.destroy_publisher(publisher)


def _image_header(frame):
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    return Header(stamp=Time(sec=frame.header.stamp.sec, nanosec=frame.header.stamp.nanosec), frame_id=TOPICS.frame_id)


def _flood(publisher, frames, stop: threading.Event) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    index = 0
    while not stop.is_set():
        msg = CompressedImage(format="jpeg", header=_image_header(frames[index % len(frames)]))
        msg.data = jpeg.tobytes()
        msg.header.stamp.sec += 1000 + index
        publisher.publish(msg)
        index += 1
        time.sleep(0.01)


# ------------------------------------------------------------------------ start and stop


@pytest.mark.parametrize(
    ("case", "parameter"),
    [
        ("missing weights", "model.weights"),
        ("unknown scorer", "scorer.name"),
        ("out-of-range value", "alerts.track_iou"),
        ("CUDA on a CPU machine", "model.device"),
    ],
)
def test_startup_error_is_one_line_naming_the_parameter_and_exit_1(assets, tmp_path, case, parameter):
    import torch

    weights = str(assets["random_weights"])
    parameters = {
        "missing weights": {"model.weights": str(tmp_path / "missing.safetensors")},
        "unknown scorer": {"model.weights": weights, "scorer.name": "no_such_scorer"},
        "out-of-range value": {"model.weights": weights, "alerts.track_iou": 2.0},
        "CUDA on a CPU machine": {"model.weights": weights, "model.device": "cuda"},
    }[case]
    if case.startswith("CUDA") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    node = NodeProcess(node_args(parameters), tmp_path / "node.log")
    node.proc.wait(90)
    returncode = node.stop()
    lines = [line for line in node.output.splitlines() if line.strip() and "loading model" not in line]
    assert returncode == 1, node.output
    assert len(lines) == 1 and "Traceback" not in node.output, node.output
    assert lines[0].startswith("[FATAL]") and f"parameter {parameter}" in lines[0], lines[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_model_loads_is_a_clean_stop(assets, tmp_path, sig):
    node = NodeProcess(
        node_args({"model.weights": str(DEMO_CHECKPOINT), "model.backend": "eager"}), tmp_path / "node.log"
    )
    node.wait_output("loading model", timeout=60)
    _assert_clean_exit(node, sig)


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux /proc, SigCgt bit mask)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_torch_and_rclpy_are_imported_is_a_clean_stop(tmp_path, sig):
    """Before rclpy.init (importing torch and rclpy takes seconds): exit 0, no traceback, even when
    the node is started with SIGINT ignored, as a background job's children are."""
    node = NodeProcess(node_args({"model.weights": str(DEMO_CHECKPOINT)}), tmp_path / "node.log", ignore_sigint=True)
    # Send it once the entry point handles the signal (its bit in /proc/PID/status SigCgt), while the
    # imports still run: the node has logged nothing yet.
    RosGraph.wait_for(lambda: _catches(node.proc.pid, sig) or node.proc.poll() is not None, 30, "a signal handler")
    assert "loading model" not in node.output
    _assert_clean_exit(node, sig)


# ------------------------------------------------------- transport, overload, memory soak


@pytest.fixture(scope="module")
def fast_node(graph, assets):
    """The random-weight model at a 32x64 input: a few milliseconds per frame."""
    node = _start(
        graph,
        assets["root"],
        "fast",
        {"model.weights": str(assets["random_weights"]), "diagnostics.period_s": 0.2, "input.use_camera_info": False},
        remaps={"image": FAST_IMAGE},
        node_name="fast_seg",
    )
    outputs = Outputs(graph, "/fast_seg")
    yield node, outputs
    outputs.destroy()
    _assert_clean_exit(node, signal.SIGINT)


def _frame_msg(height: int, width: int, sec: int, value: int = 0) -> Image:
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    msg = Image(
        header=Header(stamp=Time(sec=sec, nanosec=0), frame_id=TOPICS.frame_id),
        height=height,
        width=width,
        encoding="rgb8",
        step=3 * width,
    )
    msg.data = array.array("B", bytes([value % 256]) * (3 * width * height))
    return msg


def test_full_size_frames_arrive_on_default_fast_dds(graph, fast_node):
    """1024x512 rgb8 (1.5 MB) frames from a reliable camera publisher all reach the node; a
    best-effort publisher is refused with a hint naming the QoS override."""
    node, outputs = fast_node
    before = outputs.wait_status(lambda s: "frames received" in s, 10, "diagnostics")
    publisher = graph.node.create_publisher(Image, FAST_IMAGE, 10)
    graph.wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the node to match")
    time.sleep(0.3)
    for index in range(20):
        publisher.publish(_frame_msg(512, 1024, 5000 + index, index))
        time.sleep(0.2)
    try:
        status = outputs.wait_status(
            lambda s: _count(s, "frames received") - _count(before, "frames received") >= 20, 20, "20 full-size frames"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}: {before} -> {outputs.status()}") from None
    assert _count(status, "frames received") - _count(before, "frames received") == 20
    graph.node.destroy_publisher(publisher)
    best_effort = graph.node.create_publisher(Image, FAST_IMAGE, BEST_EFFORT)
    node.wait_output("subscription.reliability:=best_effort", timeout=20)
    graph.node.destroy_publisher(best_effort)


def test_overload_keeps_latency_bounded_and_counts_drops(graph, fast_node):
    node, outputs = fast_node
    publisher = graph.node.create_publisher(Image, FAST_IMAGE, 10)
    graph.wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the node to match")
    # Warm-up: a frame sent while discovery is still settling may not arrive (seen once in a CI
    # run); resend until the node answers, so the measurement below starts on a working link.
    outputs.clear()
    deadline = time.monotonic() + 60
    while not outputs.msgs[messages.OBSTACLE_ALERTS] and time.monotonic() < deadline:
        publisher.publish(_frame_msg(HEIGHT, WIDTH, 5999))
        time.sleep(1.0)  # the graph fixture spins in its own thread
    assert outputs.msgs[messages.OBSTACLE_ALERTS], "the node answered no frame within 60 s"
    time.sleep(0.5)
    # The node's processing time, measured on this machine now.
    outputs.clear()
    sent_at: dict[int, float] = {}
    for index in range(10):
        sent_at[6000 + index] = time.time()
        publisher.publish(_frame_msg(HEIGHT, WIDTH, 6000 + index))
        graph.wait_for(lambda i=index: len(outputs.msgs[messages.OBSTACLE_ALERTS]) > i, 10, "a frame")
    arrivals = outputs.arrivals[messages.OBSTACLE_ALERTS]
    processing_s = float(np.median([arrivals[i] - sent_at[6000 + i] for i in range(10)]))
    # Idle node: a status published from now on counts every frame so far.
    idle_since = time.monotonic()
    graph.wait_for(lambda: bool(outputs.status(after=idle_since)), 10, "a fresh status")
    before = outputs.status(after=idle_since)
    # Frames at 3x that rate, stamped with their send time.
    outputs.clear()
    period = processing_s / 3
    count = 150
    for _ in range(count):
        now = time.time()
        msg = _frame_msg(HEIGHT, WIDTH, 0)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        publisher.publish(msg)
        time.sleep(period)
    graph.node.destroy_publisher(publisher)
    time.sleep(max(1.0, 5 * processing_s))
    stamps = outputs.stamps(messages.OBSTACLE_ALERTS)
    latencies = [
        arrival - stamp / 1e9 for arrival, stamp in zip(outputs.arrivals[messages.OBSTACLE_ALERTS], stamps, strict=True)
    ]
    received_out = len(set(stamps))
    assert 0 < received_out < count, "at 3x the processing rate some frames must be dropped"
    # Bounded: about one processing time plus one wait, however long the overload lasts. A FIFO
    # would fall behind by 2 of every 3 frames sent; the margin absorbs a shared, loaded machine.
    bound = 6 * processing_s + 1.0
    # p90 and the last frames: a single scheduling hiccup on a shared machine is not a queue.
    assert np.percentile(latencies, 90) < bound, (sorted(latencies)[-10:], processing_s)
    assert np.mean(latencies[-10:]) < bound, (latencies[-10:], processing_s)
    status = outputs.wait_status(
        lambda s: (
            _count(s, "frames processed") - _count(before, "frames processed") >= received_out
            and s.get("frames received") == str(_count(s, "frames processed") + _count(s, "frames dropped"))
        ),
        20,
        f"diagnostics to count the {received_out} frames that came out",
    )
    received = _count(status, "frames received") - _count(before, "frames received")
    processed = _count(status, "frames processed") - _count(before, "frames processed")
    dropped = _count(status, "frames dropped") - _count(before, "frames dropped")
    assert processed == received_out, "diagnostics count exactly the frames the probe saw come out"
    assert received + dropped >= received and received <= count
    assert received == processed + dropped, (received, processed, dropped)
    assert dropped > 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_of_2000_frames_keeps_memory_flat(graph, fast_node):
    node, outputs = fast_node
    outputs.destroy()  # nobody listens to the outputs: the node's own memory, not the probe's
    publisher = graph.node.create_publisher(Image, FAST_IMAGE, 10)
    graph.wait_for(lambda: publisher.get_subscription_count() > 0, 10, "the node to match")
    samples = []
    msg = _frame_msg(48, 96, 0)
    for index in range(2000):
        msg.header.stamp.sec = 10000 + index
        publisher.publish(msg)
        time.sleep(0.004)
        if index % 200 == 199:
            samples.append(_rss_kb(node.proc.pid))
    graph.node.destroy_publisher(publisher)
    warm = samples[2:]  # after warm-up (allocator pools, first frames)
    growth_mb = (max(warm) - warm[0]) / 1024
    assert growth_mb < 8.0, f"RSS samples (kB): {samples}"
    outputs.__init__(graph, "/fast_seg")  # resubscribe for the fixture's teardown

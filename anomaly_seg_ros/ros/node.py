"""``anomaly_seg_node``: the rclpy layer over the perception core.

Everything that decides anything lives in plain-Python modules tested without ROS
(``parameters``, ``frame_queue``, ``diagnostics``, ``messages``, ``conversions``,
``ground``, ``Perception``); this module only wires them to rclpy:

* the image callback converts nothing and never waits: it puts the message into a queue
  of one, which a worker thread drains (decode, inference, publishing), so the executor
  stays responsive and latency stays bounded under overload (drops are counted);
* parameters are declared from the configuration schema and run-time changes go through
  ``Perception.update`` (validated as a whole; rejected with the reason);
* start-up problems (bad configuration, unreadable weights, missing CUDA) end the process
  with one log line naming the parameter and exit status 1.

This module imports rclpy and ROS message packages, so only the entry point and the ROS
tests import it.
"""

from __future__ import annotations

import array
import sys
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import rclpy
from anomaly_seg_msgs.msg import ObstacleAlert, ObstacleAlertArray
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from anomaly_seg_ros.common.errors import AnomalySegError, MessageConversionError
from anomaly_seg_ros.core.ground import GroundModel
from anomaly_seg_ros.core.perception import Perception, PerceptionResult
from anomaly_seg_ros.ros import messages
from anomaly_seg_ros.ros.conversions import image_buffer, message_to_rgb
from anomaly_seg_ros.ros.diagnostics import DIAGNOSTIC_ARRAY, DIAGNOSTIC_STATUS, KEY_VALUE, PipelineStats
from anomaly_seg_ros.ros.diagnostics import diagnostic_array_msg as build_diagnostics
from anomaly_seg_ros.ros.frame_queue import LatestSlot, PipelineWorker
from anomaly_seg_ros.ros.parameters import (
    ParameterSpec,
    apply_changes,
    config_from_parameters,
    parameter_specs,
    specs_by_name,
    startup_error_message,
)
from anomaly_seg_ros.ros.typestore import OBSTACLE_ALERT, OBSTACLE_ALERT_ARRAY

NODE_NAME = "anomaly_seg_node"

#: rclpy message classes under the names the duck-typed builders look up.
RCLPY_TYPES = SimpleNamespace(
    types={
        OBSTACLE_ALERT: ObstacleAlert,
        OBSTACLE_ALERT_ARRAY: ObstacleAlertArray,
        "sensor_msgs/msg/RegionOfInterest": RegionOfInterest,
        "geometry_msgs/msg/Point": Point,
        DIAGNOSTIC_ARRAY: DiagnosticArray,
        DIAGNOSTIC_STATUS: DiagnosticStatus,
        KEY_VALUE: KeyValue,
    }
)

_ARRAY_TYPES = {"integer_array": Parameter.Type.INTEGER_ARRAY, "double_array": Parameter.Type.DOUBLE_ARRAY}

#: Reliable, keep-last: a planner must not miss an alert on a lossy link.
ALERT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Keep-last 1: image views are for looking at; an old one is worth nothing.
VIEW_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Camera input: reliable keep-last 3. A full-size frame (1.5 MB at 1024x512 rgb8) is split into
#: many DDS fragments; best-effort between processes on a default Fast DDS loses almost every
#: frame (0-2 of 60 arrive), reliable delivery gets all of them (test_ros_graph.py). Depth 3,
#: not 1: while the worker holds the GIL the executor may be late, and a frame replaced in the
#: reader's history would be lost uncounted; the worker's latest-value slot drops (and counts)
#: old frames instead, which keeps latency bounded. A best-effort camera publisher does not
#: match a reliable subscription: the node then logs how to override the reliability.
IMAGE_QOS = QoSProfile(depth=3, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


class StartupError(Exception):
    """The node cannot start; the message names the parameter to fix."""


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(
        description=spec.description,
        additional_constraints=spec.additional_constraints,
        read_only=spec.read_only,
    )
    if spec.value_range is not None:
        low, high = spec.value_range
        if spec.kind == "integer":
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        else:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)
            ]
    return descriptor


def image_msg(header: Header, values: np.ndarray, encoding: str) -> Image:
    """An rclpy Image from a buffer: ``array.array`` assignment skips rclpy's per-element check (rclpy#763)."""
    buf = image_buffer(values, encoding)
    msg = Image(header=header, height=buf.height, width=buf.width, encoding=buf.encoding, is_bigendian=0, step=buf.step)
    msg.data = array.array("B", buf.data.tobytes())
    return msg


class AnomalySegNode(Node):
    """Camera image in; semantic mask, anomaly heatmap, colour views, obstacle alerts and diagnostics out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = self._declare_parameters()
        try:
            config = config_from_parameters(values)
            self.get_logger().info(f"loading model {config.model.name} from {config.model.weights}")
            self._perception = Perception.from_config(config)
        except AnomalySegError as error:
            raise StartupError(startup_error_message(error)) from None
        # Perception is used by the worker and changed by parameter callbacks; a parameter change
        # waits for the frame in progress (rare), image and camera_info callbacks never take it.
        self._lock = threading.Lock()
        self._height_m = float(values["ground.camera_height_m"])
        self._pitch_rad = float(values["ground.camera_pitch_rad"])
        self._camera_info: CameraInfo | None = None
        self._ground: GroundModel | None = None
        self._hardware_id = str(values["diagnostics.hardware_id"])
        self._frame_id = ""

        model = config.model
        self._stats = PipelineStats(backend=self._perception.backend_name, device=model.device)
        self._slot: LatestSlot[Image | CompressedImage] = LatestSlot()
        self._worker = PipelineWorker(self._slot, self._process, on_done=self._done, on_error=self._failed)

        # Not ``_publishers``: rclpy's Node keeps its own list of publishers under that name.
        self._image_publishers = {
            messages.SEMANTIC_MASK: self.create_publisher(Image, f"~/{messages.SEMANTIC_MASK}", VIEW_QOS),
            messages.SEMANTIC_COLOR: self.create_publisher(Image, f"~/{messages.SEMANTIC_COLOR}", VIEW_QOS),
            messages.ANOMALY_HEATMAP: self.create_publisher(Image, f"~/{messages.ANOMALY_HEATMAP}", VIEW_QOS),
            messages.ANOMALY_OVERLAY: self.create_publisher(Image, f"~/{messages.ANOMALY_OVERLAY}", VIEW_QOS),
        }
        self._alerts_pub = self.create_publisher(
            ObstacleAlertArray,
            f"~/{messages.OBSTACLE_ALERTS}",
            ALERT_QOS,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
        )
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        compressed = bool(values["input.compressed"])
        self._image_sub = self.create_subscription(
            CompressedImage if compressed else Image,
            "image/compressed" if compressed else "image",
            self._on_image,
            IMAGE_QOS,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_image_qos),
        )
        if values["input.use_camera_info"]:
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(float(values["diagnostics.period_s"]), self._publish_diagnostics)
        self._worker.start()
        self.get_logger().info(
            f"model {model.name} on {model.device} ({self._perception.backend.describe()}), "
            f"scorer {config.scorer.name}, "
            f"threshold {self._perception.threshold:g}; input {'image/compressed' if compressed else 'image'}"
        )

    # -- parameters --------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter; values after launch/YAML overrides (None = declared unset)."""
        values = {}
        for spec in parameter_specs():
            default = _ARRAY_TYPES[spec.kind] if spec.declared_unset else spec.default
            try:
                values[spec.name] = self.declare_parameter(spec.name, default, _descriptor(spec)).value
            except (InvalidParameterTypeException, InvalidParameterValueException) as error:
                raise StartupError(f"cannot start: parameter {spec.name}: {error}") from None
        return values

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        specs = specs_by_name()
        changes = {param.name: param.value for param in params if param.name in specs}
        with self._lock:
            reason = apply_changes(self._perception.update, changes)
        if reason is None:
            self._height_m = float(changes.get("ground.camera_height_m", self._height_m))
            self._pitch_rad = float(changes.get("ground.camera_pitch_rad", self._pitch_rad))
            self._ground = self._ground_model()
        if reason is not None:
            self.get_logger().warning(f"parameter change rejected: {reason}")
        return SetParametersResult(successful=reason is None, reason=reason or "")

    # -- input -------------------------------------------------------------------------

    def _on_incompatible_image_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        topic = self._image_sub.topic_name
        self.get_logger().warning(
            f"a publisher on {topic} offers an incompatible QoS (policy id {event.last_policy_kind}); "
            f"for a best-effort camera start the node with "
            f"-p qos_overrides.{topic}.subscription.reliability:=best_effort",
            throttle_duration_sec=30.0,
        )

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._stats.record_received(self._slot.put(msg))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        # Only the executor thread writes _ground; the worker reads it once per frame.
        if self._camera_info is None or list(msg.k) != list(self._camera_info.k):
            self._camera_info = msg
            self._ground = self._ground_model()

    def _ground_model(self) -> GroundModel | None:
        if self._camera_info is None or self._height_m <= 0.0:
            return None
        try:
            return GroundModel.from_camera_info(self._camera_info, self._height_m, self._pitch_rad)
        except ValueError as error:
            self.get_logger().warning(f"no ground positions: {error}", throttle_duration_sec=10.0)
            return None

    # -- worker thread -----------------------------------------------------------------

    def _process(self, msg: Image | CompressedImage) -> None:
        frame = message_to_rgb(msg)
        color_wanted = self._image_publishers[messages.SEMANTIC_COLOR].get_subscription_count() > 0
        overlay_wanted = self._image_publishers[messages.ANOMALY_OVERLAY].get_subscription_count() > 0
        with self._lock:
            result = self._perception.process(frame, render_color=color_wanted, render_overlay=overlay_wanted)
            ground = self._ground
        self._publish(msg.header, result, ground)
        self._frame_id = msg.header.frame_id

    def _publish(self, header: Header, result: PerceptionResult, ground: GroundModel | None) -> None:
        """Every output of one frame, carrying the input image's header."""
        self._image_publishers[messages.SEMANTIC_MASK].publish(image_msg(header, result.labels, "mono8"))
        self._image_publishers[messages.ANOMALY_HEATMAP].publish(image_msg(header, result.anomaly, "32FC1"))
        if result.color is not None:
            self._image_publishers[messages.SEMANTIC_COLOR].publish(image_msg(header, result.color, "rgb8"))
        if result.overlay is not None:
            self._image_publishers[messages.ANOMALY_OVERLAY].publish(image_msg(header, result.overlay, "rgb8"))
        self._alerts_pub.publish(messages.alert_array_msg(RCLPY_TYPES, header, result, ground))

    def _done(self, msg: Image | CompressedImage, latency_s: float) -> None:
        self._stats.record_processed(latency_s)

    def _failed(self, msg: Image | CompressedImage, error: Exception) -> None:
        """A bad frame is counted, logged (throttled) and skipped; the node keeps going."""
        if not self.context.ok():
            return  # shutting down (SIGINT/SIGTERM): the frame in progress could not be published
        if isinstance(error, MessageConversionError):
            self._stats.record_rejected(error.reason)
            self.get_logger().warning(f"input message rejected: {error}", throttle_duration_sec=5.0)
        else:
            self._stats.record_rejected("processing_failed")
            self.get_logger().error(f"processing a frame failed: {error!r}", throttle_duration_sec=5.0)

    # -- diagnostics -------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id="")
        self._diagnostics_pub.publish(
            build_diagnostics(
                RCLPY_TYPES,
                header,
                self._stats.snapshot(),
                name=f"{self.get_name()}: pipeline",
                hardware_id=self._hardware_id or self._frame_id or self.get_fully_qualified_name(),
            )
        )

    def destroy_node(self) -> None:
        # A node whose start-up failed has no worker yet; rclpy may still destroy it.
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run anomaly_seg_ros anomaly_seg_node``; exit status 1 on a start-up error."""
    rclpy.init(args=args)
    try:
        node = AnomalySegNode()
    except StartupError as error:
        get_logger(NODE_NAME).fatal(str(error))
        rclpy.try_shutdown()
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()  # SIGINT/SIGTERM while the model loads: a normal stop
        return 0
    except Exception:
        if rclpy.ok():
            raise
        return 0  # the context was shut down by a signal half-way through start-up
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

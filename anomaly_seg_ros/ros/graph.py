"""A rosbag2 player and recorder on rclpy + rosbags, for a live graph without rosbag2.

The ROS 2 pip wheels have no ``ros2 bag``; these two stand in for ``ros2 bag play`` and
``ros2 bag record`` in the demo and the integration tests. Messages travel as the CDR bytes
stored in the bag (rclpy publishes and receives serialised messages), so nothing is
converted on the way: a node sees exactly what the bag holds, and a recording holds exactly
what the node published.

This module imports rclpy; the offline tools never import it.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError

from anomaly_seg_ros.common.errors import BagError
from anomaly_seg_ros.ros.typestore import get_typestore

_STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

#: Reliable keep-last 10, like a camera driver's default publisher and ``ros2 bag play``.
PLAYER_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def message_class(msgtype: str) -> type:
    """The rclpy class of ``pkg/msg/Name`` (raises ImportError when the package is not built)."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class BagPlayer:
    """Publish a bag's messages on ``node`` with their recorded timing (``ros2 bag play``).

    ``remap`` renames topics (bag topic -> published topic). The bag is streamed, not loaded.
    """

    def __init__(
        self,
        node: Node,
        bag: str | Path,
        *,
        topics: Collection[str] | None = None,
        remap: Mapping[str, str] | None = None,
        qos: QoSProfile = PLAYER_QOS,
    ) -> None:
        self.bag = Path(bag)
        with Reader(self.bag) as reader:
            available = {c.topic: c.msgtype for c in reader.connections}
        self.topics = list(topics) if topics is not None else list(available)
        self._remap = dict(remap or {})
        self._publishers = {
            topic: node.create_publisher(message_class(available[topic]), self._remap.get(topic, topic), qos)
            for topic in self.topics
        }
        self.published = 0

    def publisher(self, topic: str) -> Any:
        """The rclpy publisher of a bag topic (e.g. to wait for subscribers)."""
        return self._publishers[topic]

    def play(self, *, rate: float = 1.0, stop: threading.Event | None = None) -> int:
        """Publish every message once, ``rate`` times as fast as recorded; returns how many.

        Blocks the calling thread (run it beside an executor); ``stop`` ends it early.
        """
        first_ns: int | None = None
        started = time.monotonic()
        count = 0
        with Reader(self.bag) as reader:
            connections = [c for c in reader.connections if c.topic in self.topics]
            for connection, timestamp_ns, rawdata in reader.messages(connections):
                if stop is not None and stop.is_set():
                    break
                first_ns = timestamp_ns if first_ns is None else first_ns
                if self._wait(started + (timestamp_ns - first_ns) / 1e9 / rate, stop):
                    break
                self._publishers[connection.topic].publish(bytes(rawdata))
                count += 1
        self.published += count
        return count

    @staticmethod
    def _wait(due: float, stop: threading.Event | None) -> bool:
        """Sleep until the monotonic time ``due``; True when ``stop`` was set meanwhile."""
        delay = due - time.monotonic()
        if delay <= 0:
            return False
        if stop is not None:
            return stop.wait(delay)
        time.sleep(delay)
        return False


class BagRecorder:
    """Write the messages that arrive on ``topics`` (topic -> ``pkg/msg/Name``) into a new bag.

    Each message is stored as received (CDR) at its arrival time on ``node``'s clock, as
    ``ros2 bag record`` does. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        node: Node,
        path: str | Path,
        topics: Mapping[str, str],
        *,
        qos: QoSProfile | Mapping[str, QoSProfile] = PLAYER_QOS,
        storage: str = "mcap",
    ) -> None:
        self._node = node
        self._lock = threading.Lock()
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {self.path} exists already; choose a new path or remove it")
        typestore = get_typestore()
        self._writer = Writer(self.path, version=8, storage_plugin=_STORAGE[storage])
        try:
            self._writer.open()
        except (WriterError, OSError) as error:
            raise BagError(f"cannot create bag {self.path}: {error}") from error
        self.counts = dict.fromkeys(topics, 0)
        self._connections = {
            topic: self._writer.add_connection(topic, msgtype, typestore=typestore) for topic, msgtype in topics.items()
        }
        self._subscriptions = []
        for topic, msgtype in topics.items():
            profile = qos.get(topic, PLAYER_QOS) if isinstance(qos, Mapping) else qos
            self._subscriptions.append(
                node.create_subscription(
                    message_class(msgtype),
                    topic,
                    lambda raw, topic=topic: self._write(topic, raw),
                    profile,
                    raw=True,
                )
            )
        self._open = True

    def _write(self, topic: str, rawdata: bytes) -> None:
        now_ns = self._node.get_clock().now().nanoseconds
        with self._lock:
            if self._open:
                self._writer.write(self._connections[topic], now_ns, rawdata)
                self.counts[topic] += 1

    def close(self) -> None:
        """Stop recording and finish the bag (idempotent)."""
        with self._lock:
            if not self._open:
                return
            self._open = False
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._writer.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

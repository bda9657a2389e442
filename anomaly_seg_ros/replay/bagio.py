"""Typed helpers over the rosbags rosbag2 reader and writer.

The offline tools read camera topics from a recorded bag and write the node's outputs to a
new bag, without ROS installed. Everything is (de)serialised with
:func:`anomaly_seg_ros.ros.typestore.get_typestore`, so the ``anomaly_seg_msgs`` types
work like the standard ones, and rosbags errors become :class:`BagError` messages that
name the bag and what was expected.

Topics that only need copying go through as raw CDR bytes (:func:`iter_raw`,
:meth:`BagWriter.copy_raw`), so that types unknown to our typestore survive a replay.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys.store import Typestore

from anomaly_seg_ros.common.errors import BagError
from anomaly_seg_ros.ros.typestore import get_typestore

if TYPE_CHECKING:
    # Only for annotations: typing.Self is Python 3.11+, Humble runs on 3.10.
    from typing import Self

log = logging.getLogger(__name__)

Storage = Literal["mcap", "sqlite3"]

_STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# rosbag2 metadata version 9 changed the QoS serialisation in a way Humble's rosbag2
# cannot read; 8 is the oldest version rosbags writes and Humble plays it.
BAG_VERSION: Literal[8] = 8


@dataclass(frozen=True)
class BagMessage:
    """A deserialised message; ``msg`` is a rosbags dataclass of type ``msgtype``."""

    topic: str
    msgtype: str
    timestamp_ns: int
    msg: object


@dataclass(frozen=True)
class RawMessage:
    """A message as stored: CDR bytes plus the definition needed to re-declare its topic."""

    topic: str
    msgtype: str
    timestamp_ns: int
    rawdata: bytes
    msgdef: str
    rihs01: str


class BagWriter:
    """Write a new rosbag2 bag; use as a context manager.

    One message type per topic: a topic is declared once with :meth:`add_topic`, then
    written with :meth:`write` (messages) or :meth:`write_raw` (CDR bytes).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        storage: Storage = "mcap",
        typestore: Typestore | None = None,
    ) -> None:
        """Check the arguments; the bag is created on ``__enter__``.

        Raises:
            BagError: ``path`` exists (a bag is never overwritten) or unknown ``storage``.
        """
        self.path = Path(path)
        if self.path.exists():
            raise BagError(
                f"output bag {self.path} exists already; choose a new path or remove it (bags are never overwritten)"
            )
        if storage not in _STORAGE_PLUGINS:
            raise BagError(f"unknown bag storage {storage!r}, expected one of {', '.join(_STORAGE_PLUGINS)}")
        self.storage = storage
        self.typestore = typestore if typestore is not None else get_typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=_STORAGE_PLUGINS[storage])
        self._connections: dict[str, Connection] = {}

    def __enter__(self) -> Self:
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot create output bag {self.path}: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the bag even when an exception (Ctrl-C included) ends the block.

        What was written stays readable: the storage is finalised (mcap index and summary,
        sqlite3 commit) and metadata.yaml written. rosbags' own ``__exit__`` aborts instead,
        which leaves an mcap without index and no metadata.yaml, i.e. a bag no reader opens.
        The exception is not swallowed.
        """
        try:
            self._writer.close()
        except BaseException:
            with suppress(Exception):
                self._writer.abort()
            if exc_type is None:
                raise

    def add_topic(
        self,
        topic: str,
        msgtype: str,
        *,
        msgdef: str | None = None,
        rihs01: str | None = None,
    ) -> Connection:
        """Declare ``topic`` with ``msgtype``; returns the rosbags connection.

        The definition comes from the typestore unless ``msgdef`` and ``rihs01`` are given
        (as when copying a topic whose type only the input bag knows). Declaring a topic
        again with the same type returns the existing connection.

        Raises:
            BagError: the topic has another type already, or the type is unknown.
        """
        if (known := self._connections.get(topic)) is not None:
            if known.msgtype != msgtype:
                raise BagError(
                    f"topic {topic!r} in {self.path} has type {known.msgtype}, cannot add it again as {msgtype}"
                )
            return known
        if (msgdef is None or rihs01 is None) and msgtype not in self.typestore.types:
            raise BagError(
                f"message type {msgtype!r} of topic {topic!r} is not in the typestore; "
                "pass msgdef and rihs01 (e.g. from RawMessage) to copy it"
            )
        try:
            connection = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore, msgdef=msgdef, rihs01=rihs01
            )
        except WriterError as exc:
            raise BagError(f"cannot add topic {topic!r} to {self.path}: {exc}") from exc
        self._connections[topic] = connection
        return connection

    def _connection(self, topic: str) -> Connection:
        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(
                f"topic {topic!r} was not added to {self.path}; call add_topic(topic, msgtype) before writing"
            )
        return connection

    def write(self, topic: str, msg: object, timestamp_ns: int) -> None:
        """Serialise ``msg`` to CDR and write it to an added topic at ``timestamp_ns``.

        Raises:
            BagError: topic not added, or ``msg`` is not of the topic's type.
        """
        connection = self._connection(topic)
        msgtype = getattr(msg, "__msgtype__", type(msg).__name__)
        if msgtype != connection.msgtype:
            raise BagError(f"topic {topic!r} has type {connection.msgtype}, got a {msgtype} message")
        try:
            rawdata = self.typestore.serialize_cdr(msg, msgtype, little_endian=True)
        except (SerdeError, TypeError, ValueError, AttributeError) as exc:
            raise BagError(f"cannot serialise {msgtype} for topic {topic!r}: {exc}") from exc
        self._writer.write(connection, int(timestamp_ns), rawdata)

    def write_raw(self, topic: str, rawdata: bytes | memoryview, timestamp_ns: int) -> None:
        """Write already serialised CDR bytes to an added topic, unchanged."""
        self._writer.write(self._connection(topic), int(timestamp_ns), rawdata)

    def copy_raw(self, message: RawMessage) -> None:
        """Copy a message from :func:`iter_raw`, declaring its topic on first use.

        The topic keeps the input bag's definition and type hash where the bag has both
        (rosbag2 metadata version 7+, i.e. Iron and later); older bags carry no hash, so
        their types must be in the typestore.
        """
        self.add_topic(
            message.topic,
            message.msgtype,
            msgdef=message.msgdef or None,
            rihs01=message.rihs01 or None,
        )
        self.write_raw(message.topic, message.rawdata, message.timestamp_ns)


MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass(frozen=True)
class TruncatedMcap:
    """An mcap file whose end is missing (the recorder died: power cut, kill -9).

    rosbag2 writes the mcap summary, footer and metadata.yaml when it closes the bag, so such
    a file has none of them; its records up to ``readable_bytes`` are intact.
    """

    file: Path
    size: int
    #: Bytes of whole records from the start; the rest is a record cut off mid-way.
    readable_bytes: int

    def describe(self) -> str:
        return (
            f"{self.file} is truncated (no mcap footer: the recording was cut off); "
            f"its first {self.readable_bytes} of {self.size} bytes are whole records"
        )


def truncated_mcap(path: str | Path) -> TruncatedMcap | None:
    """The :class:`TruncatedMcap` of ``path`` (an .mcap file, or a rosbag2 folder without metadata.yaml
    holding one .mcap) when its end is missing; None for anything else."""
    path = Path(path)
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        files = sorted(path.glob("*.mcap"))
        path = files[0] if len(files) == 1 else path
    if not (path.is_file() and path.suffix == ".mcap"):
        return None
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(8) != MCAP_MAGIC:
            return None
        if size >= 16:
            handle.seek(-8, 2)
            if handle.read(8) == MCAP_MAGIC:
                return None  # a complete file
        offset = 8
        while offset + 9 <= size:  # top-level records: opcode (1 byte), length (uint64), content
            handle.seek(offset)
            opcode_and_length = handle.read(9)
            length = int.from_bytes(opcode_and_length[1:], "little")
            if opcode_and_length[0] == 0x02 or offset + 9 + length > size:  # footer, or a cut record
                break
            offset += 9 + length
    return TruncatedMcap(path, size, offset)


class _TruncatedMcapReader:
    """The readable part of a :class:`TruncatedMcap`, with the reader interface used here.

    rosbags' mcap reader scans a file without summary record by record (``meta_scan``,
    ``messages_scan``) but insists on a footer; this opens it on the whole records only.
    """

    def __init__(self, truncated: TruncatedMcap) -> None:
        from rosbags.interfaces import TopicInfo
        from rosbags.rosbag2.storage_mcap import McapReader

        self.path = truncated.file
        self._mcap = McapReader(truncated.file)
        try:
            self._mcap.bio = truncated.file.open("rb")
            self._mcap.bio.seek(8)
            if self._mcap.bio.read(1) != b"\x01":
                raise ReaderError("no mcap header record")
            length = int.from_bytes(self._mcap.bio.read(8), "little")
            self._mcap.data_start = 17 + length
            self._mcap.data_end = truncated.readable_bytes
            self._mcap.meta_scan()
        except (ReaderError, AttributeError, ValueError, OSError) as exc:
            self.close()
            raise BagError(f"cannot read the readable part of {truncated.describe()}: {exc}") from exc
        counts = self._mcap.statistics.channel_message_counts
        self.connections = [conn._replace(msgcount=counts.get(conn.id, 0)) for conn in self._mcap.connections]
        self.topics = {
            conn.topic: TopicInfo(conn.msgtype, conn.msgdef, conn.msgcount, [conn]) for conn in self.connections
        }

    def messages(self, connections: Collection[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
        by_id = {conn.id: conn for conn in connections}
        for conn, timestamp, rawdata in self._mcap.messages_scan(list(by_id.values())):
            yield by_id[conn.id], timestamp, rawdata

    def close(self) -> None:
        if self._mcap.bio is not None:
            self._mcap.bio.close()
            self._mcap.bio = None


@contextmanager
def open_bag(path: str | Path) -> Iterator[Reader]:
    """Open a rosbag2 folder (mcap or sqlite3, from its metadata.yaml) or a single .mcap/.db3.

    A truncated mcap (:func:`truncated_mcap`) opens on its readable part, with a warning
    that says where it ends.

    Raises:
        BagError: missing path, a folder without metadata.yaml, or an unreadable bag.
    """
    path = Path(path)
    if (truncated := truncated_mcap(path)) is not None:
        reader = _TruncatedMcapReader(truncated)
        log.warning("%s; reading those", truncated.describe())
        try:
            yield reader  # type: ignore[misc]  # the subset of Reader used in this module
        finally:
            reader.close()
        return
    if not path.exists():
        raise BagError(f"bag {path} does not exist; expected a rosbag2 folder or .mcap/.db3 file")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(
            f"{path} is not a rosbag2 folder: it has no metadata.yaml (expected the folder "
            "that 'ros2 bag record' writes)"
        )
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError) as exc:
        raise BagError(f"cannot open bag {path}: {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def _select(reader: Reader, topics: Collection[str] | None) -> list[Connection]:
    """Connections of ``topics`` (all when None); a topic not in the bag is an error."""
    if topics is None:
        return list(reader.connections)
    missing = set(topics) - {conn.topic for conn in reader.connections}
    if missing:
        available = ", ".join(sorted(reader.topics)) or "none"
        raise BagError(f"topic(s) {', '.join(sorted(missing))} not in bag {reader.path}; available: {available}")
    return [conn for conn in reader.connections if conn.topic in topics]


def _check_types(reader: Reader, connections: list[Connection], typestore: Typestore) -> None:
    """Fail before reading if a type is unknown or its hash says the definition differs."""
    for conn in connections:
        if conn.msgtype not in typestore.types:
            raise BagError(
                f"topic {conn.topic!r} in {reader.path} has type {conn.msgtype}, which the "
                "typestore does not know; leave the topic out or copy it with iter_raw"
            )
        if conn.digest.startswith("RIHS01_") and conn.digest != typestore.hash_rihs01(conn.msgtype):
            raise BagError(
                f"topic {conn.topic!r} in {reader.path} was recorded with a different "
                f"definition of {conn.msgtype} ({conn.digest}) than the typestore's "
                f"({typestore.hash_rihs01(conn.msgtype)})"
            )


def iter_messages(
    path: str | Path,
    topics: Collection[str] | None = None,
    *,
    typestore: Typestore | None = None,
) -> Iterator[BagMessage]:
    """Deserialised messages of ``topics`` (all when None), in timestamp order per bag file.

    Raises:
        BagError: bag unreadable, a topic not in the bag, a type the typestore does not
            know, or a message that does not deserialise.
    """
    store = typestore if typestore is not None else get_typestore()
    with open_bag(path) as reader:
        connections = _select(reader, topics)
        _check_types(reader, connections, store)
        for conn, timestamp, rawdata in reader.messages(connections):
            try:
                msg = store.deserialize_cdr(rawdata, conn.msgtype)
            except SerdeError as exc:
                raise BagError(
                    f"cannot deserialise {conn.msgtype} on {conn.topic!r} at {timestamp} ns in {reader.path}: {exc}"
                ) from exc
            yield BagMessage(conn.topic, conn.msgtype, timestamp, msg)


def iter_raw(path: str | Path, topics: Collection[str] | None = None) -> Iterator[RawMessage]:
    """Messages of ``topics`` (all when None) as stored, for copying into another bag."""
    with open_bag(path) as reader:
        for conn, timestamp, rawdata in reader.messages(_select(reader, topics)):
            yield RawMessage(
                topic=conn.topic,
                msgtype=conn.msgtype,
                timestamp_ns=timestamp,
                rawdata=bytes(rawdata),
                msgdef=conn.msgdef.data,
                rihs01=conn.digest,
            )


def list_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """``{topic: (msgtype, message count)}`` of a bag, sorted by topic.

    A topic recorded with several types (rare; rosbag2 allows it) lists them joined by
    ``" | "``.
    """
    with open_bag(path) as reader:
        return {
            topic: (
                info.msgtype or " | ".join(sorted({c.msgtype for c in info.connections})),
                info.msgcount,
            )
            for topic, info in reader.topics.items()
        }

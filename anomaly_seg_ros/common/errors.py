"""Project exceptions.

Every error raised for bad input names what was wrong and what was expected, so that the
node can log it, count it and keep going, and the offline tools can stop with a message a
user can act on.
"""

from __future__ import annotations


class AnomalySegError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AnomalySegError, ValueError):
    """A configuration key is unknown, missing or out of range; the message names the key."""


class CheckpointError(AnomalySegError):
    """A checkpoint file is missing, unreadable or does not match the model; names file and keys."""


class MessageConversionError(AnomalySegError, ValueError):
    """A ROS message could not be turned into an image; ``reason`` is a short machine-friendly tag."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DatasetError(AnomalySegError):
    """A dataset folder is missing or does not have the expected layout; names the file or layout."""


class BagError(AnomalySegError):
    """A rosbag2 file cannot be replayed as asked (no such topic, ambiguous camera topic, ...)."""

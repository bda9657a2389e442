"""The bad-input matrix of the ``anomaly-seg`` commands: one case per row, its expected outcome in the row.

Every bad config, checkpoint or bag must end the command before any work starts, with exit
status 2 and one line on stderr that names the key or file; no traceback, no output bag. A new
case is a new row of ``CASES``: ``(id, command, files, expected exit, expected text)`` where
``command`` is the argv after ``anomaly-seg`` with ``{bag}``, ``{ckpt}``, ``{out}`` and
``{tmp}`` placeholders and ``files`` writes what the case needs into ``tmp``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from anomaly_seg_ros.models import build_model, save_checkpoint
from anomaly_seg_ros.replay.bagio import BagWriter
from anomaly_seg_ros.replay.synthetic_bag import write_sequence_bag
from anomaly_seg_ros.ros.conversions import make_header
from anomaly_seg_ros.ros.typestore import get_typestore
from anomaly_seg_ros.tools.cli import main

BAG = ["bag", "{bag}", "--out", "{out}", "--weights", "{ckpt}", "--no-progress", "--no-plots"]
EVALUATE = ["evaluate", "--checkpoint", "{ckpt}", "--dataset", "synthetic:{tmp}", "--out", "{out}", "--no-progress"]


def _checkpoint(tmp: Path, **metadata) -> None:
    calibration = {"energy": {"threshold": 0.0, "range": [-1.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19),
        tmp / "bad.safetensors",
        metadata={"input_size": [64, 128], "calibration": calibration, **metadata},
    )


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        path = tmp / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return write


def _pth(model: str, num_classes: int, *, prefix: str = "module.", drop: str | None = None) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        torch.manual_seed(0)
        state = build_model(model, num_classes=num_classes).state_dict()
        torch.save({prefix + k: v for k, v in state.items() if drop is None or drop not in k}, tmp / "bad.pth")

    return write


def _bag(topics: dict[str, str], messages: int = 0) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        store = get_typestore()
        with BagWriter(tmp / "odd_bag", typestore=store) as writer:
            for topic, kind in topics.items():
                writer.add_topic(topic, kind)
                for index in range(messages):
                    writer.write(topic, store.types[kind](header=make_header(store, index, "x"), data="x"), index)

    return write


def _both(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        for writer in writers:
            writer(tmp)

    return write


def _nothing(tmp: Path) -> None:
    pass


# id, command, files, expected exit status, expected text of the one error line
CASES = [
    # -- configuration: --set values and config files
    ("set-unclosed-yaml", [*BAG, "--set", "alerts.threshold=[unclosed"], _nothing, 2, "alerts.threshold"),
    ("set-nan-threshold", [*BAG, "--set", "alerts.threshold=.nan"], _nothing, 2, "alerts.threshold: expected a finite"),
    ("set-inf-range", [*BAG, "--set", "render.heatmap_range=[-.inf, .inf]"], _nothing, 2, "render.heatmap_range"),
    ("set-mean-2-values", [*BAG, "--set", "model.mean=[0, 0]"], _nothing, 2, "model.mean"),
    ("set-std-zero", [*BAG, "--set", "model.std=[0, 1, 1]"], _nothing, 2, "model.std"),
    ("set-no-equals", [*BAG, "--set", "alerts.threshold"], _nothing, 2, "expected KEY=VALUE"),
    (
        "config-not-utf8",
        [*BAG, "--config", "{tmp}/latin1.yaml"],
        _write("latin1.yaml", "alerts:\n  roi: none # caf\xe9\n".encode("latin-1")),
        2,
        "latin1.yaml is not UTF-8",
    ),
    (
        "config-nan-threshold",
        [*BAG, "--config", "{tmp}/nan.yaml"],
        _write("nan.yaml", "alerts:\n  threshold: .nan\n"),
        2,
        "alerts.threshold: expected a finite number",
    ),
    (
        "config-inf-range",
        [*BAG, "--config", "{tmp}/inf.yaml"],
        _write("inf.yaml", "render:\n  heatmap_range: [-.inf, .inf]\n"),
        2,
        "render.heatmap_range[0]: expected a finite number",
    ),
    (
        "config-bad-yaml",
        [*BAG, "--config", "{tmp}/broken.yaml"],
        _write("broken.yaml", "alerts: [\n"),
        2,
        "broken.yaml is not valid YAML",
    ),
    ("config-is-directory", [*BAG, "--config", "{tmp}"], _nothing, 2, "is a directory; expected a YAML file"),
    ("config-missing", [*BAG, "--config", "{tmp}/none.yaml"], _nothing, 2, "none.yaml does not exist"),
    # -- checkpoints
    ("checkpoint-is-directory", [*BAG[:-4], "--weights", "{tmp}", *BAG[-2:]], _nothing, 2, "is a directory"),
    (
        "metadata-input-size-0x-5",
        [*BAG[:-4], "--weights", "{tmp}/bad.safetensors", *BAG[-2:]],
        lambda tmp: _checkpoint(tmp, input_size=[0, -5]),
        2,
        "metadata 'input_size' is [0, -5]",
    ),
    (
        "metadata-mean-string",
        [*BAG[:-4], "--weights", "{tmp}/bad.safetensors", *BAG[-2:]],
        lambda tmp: _checkpoint(tmp, mean="abc"),
        2,
        "metadata 'mean' is 'abc'",
    ),
    (
        "metadata-std-zero",
        [*BAG[:-4], "--weights", "{tmp}/bad.safetensors", *BAG[-2:]],
        lambda tmp: _checkpoint(tmp, std=[0.0, 1.0, 1.0]),
        2,
        "metadata 'std'",
    ),
    (
        "metadata-temperature-negative",
        [*BAG[:-4], "--weights", "{tmp}/bad.safetensors", *BAG[-2:]],
        lambda tmp: _checkpoint(tmp, temperature=-1.0),
        2,
        "metadata 'temperature'",
    ),
    (
        "metadata-bad-in-evaluate",
        ["evaluate", "--checkpoint", "{tmp}/bad.safetensors", "--dataset", "synthetic:{tmp}", "--out", "{out}"],
        lambda tmp: _checkpoint(tmp, input_size=[0, -5]),
        2,
        "metadata 'input_size'",
    ),
    (
        "pth-without-threshold",  # loads (model inferred), then stops: a bare state_dict has no calibration
        [*BAG[:-4], "--weights", "{tmp}/bad.pth", *BAG[-2:]],
        _pth("erfnet", 20),
        2,
        "alerts.threshold: no threshold set",
    ),
    (
        "pth-of-no-registered-model",
        [*BAG[:-4], "--weights", "{tmp}/bad.pth", *BAG[-2:]],
        _pth("erfnet", 20, drop="decoder.output_conv"),
        2,
        "not a state_dict of any registered model",
    ),
    (
        "pth-enet-exports",
        ["export", "--checkpoint", "{tmp}/bad.pth", "--backend", "eager", "--device", "cpu", "--out", "{out}"],
        _pth("enet", 20),
        0,  # export needs no threshold: the inferred ENet exports
        None,
    ),
    ("unsupported-suffix", [*BAG[:-4], "--weights", "{tmp}/x.ckpt", *BAG[-2:]], _write("x.ckpt", "x"), 2, ".ckpt"),
    # -- bags
    (
        "bag-without-topics",
        ["bag", "{tmp}/odd_bag", "--out", "{out}", "--weights", "{ckpt}"],
        _bag({}),
        2,
        "has no topics",
    ),
    (
        "bag-camera-topic-empty",
        ["bag", "{tmp}/odd_bag", "--out", "{out}", "--weights", "{ckpt}"],
        _bag({"/cam/image_raw": "sensor_msgs/msg/Image"}),
        2,
        "'/cam/image_raw' of",
    ),
    (
        "bag-no-image-topic",
        ["bag", "{tmp}/odd_bag", "--out", "{out}", "--weights", "{ckpt}"],
        _bag({"/chatter": "std_msgs/msg/String"}),
        2,
        "no camera topic",
    ),
    ("bag-missing", ["bag", "{tmp}/nowhere", "--out", "{out}", "--weights", "{ckpt}"], _nothing, 2, "nowhere"),
    # -- evaluate's arguments
    ("evaluate-unknown-argument", [*EVALUATE, "--bogus"], _nothing, 2, "anomaly-seg evaluate: error: unrecognized"),
    (
        "evaluate-auto-undetectable",
        ["evaluate", "--checkpoint", "{ckpt}", "--dataset", "auto:{tmp}/empty", "--out", "{out}"],
        lambda tmp: (tmp / "empty").mkdir(),
        2,
        "cannot detect the dataset kind",
    ),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    ckpt = root / "erfnet.safetensors"
    calibration = {"energy": {"threshold": 0.0, "range": [-1.0, 1.0]}}
    save_checkpoint(
        build_model("erfnet", num_classes=19), ckpt, metadata={"input_size": [64, 128], "calibration": calibration}
    )
    bag = write_sequence_bag(root / "drive", seed=2, num_frames=2, height=64, width=128)
    return {"bag": str(bag), "ckpt": str(ckpt)}


@pytest.mark.parametrize(("case", "command", "files", "status", "text"), CASES, ids=[row[0] for row in CASES])
def test_bad_input(tmp_path, assets, capfd, case, command, files, status, text):
    work = tmp_path / "work"
    work.mkdir()
    files(work)
    out = tmp_path / "out"
    argv = [part.format(tmp=work, out=out, **assets) for part in command]
    code = main(argv) if argv[0] != "evaluate" or "--bogus" not in argv else _exit_code(argv)
    err = capfd.readouterr().err
    assert code == status, err
    if text is None:
        return
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and text in errors[0], err
    assert "Traceback" not in err
    assert not (out.exists() and any(out.iterdir())) or argv[0] == "export", "work started before the error"


def _exit_code(argv: list[str]) -> int:
    """argparse errors exit through SystemExit; its code is the command's exit status."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code)

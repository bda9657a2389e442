"""Inference backends: selection order, fallback with reasons, precision rules, numerical agreement."""

import importlib.util
import json
import logging

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError, DatasetError
from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.inference.backends import (
    CPU_AUTO_ORDER,
    BackendRequest,
    FeatureGraph,
    calibration_batches,
    candidate_order,
    precision_problem,
    select_backend,
)
from anomaly_seg_ros.inference.preprocess import frame_to_tensor, normalize_images
from anomaly_seg_ros.inference.threads import configure_threads, default_threads
from anomaly_seg_ros.models import build_model

HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None
SMALL = (32, 64)


def _erfnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("erfnet", num_classes=19).eval()


def _input(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, *SMALL, generator=torch.Generator().manual_seed(seed))


def test_candidate_order_follows_the_documented_table():
    # small inputs: eager; larger ones: the installed ONNX runtimes first (test_cpu_runtimes.py)
    assert candidate_order("auto", "cpu", fallback=False, input_size=SMALL) == ("eager",)
    assert candidate_order("auto", "cpu", fallback=False)[-1] == CPU_AUTO_ORDER[-1] == "eager"
    assert candidate_order("auto", "cuda", fallback=False) == ("tensorrt", "compile", "eager")
    assert candidate_order("tensorrt", "cpu", fallback=True) == ("tensorrt", "compile", "eager")
    assert candidate_order("tensorrt", "cpu", fallback=False) == ("tensorrt",)
    assert candidate_order("compile", "cuda", fallback=True) == ("compile", "eager")
    assert candidate_order("eager", "cpu", fallback=True) == ("eager",)
    with pytest.raises(ConfigError, match="model.backend: expected one of"):
        candidate_order("onnx", "cpu", fallback=True)


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_problem("eager", "fp32", cpu) is None
    assert "CUDA" in precision_problem("eager", "fp16", cpu)
    assert precision_problem("compile", "fp16", cuda) is None
    assert "tensorrt" in precision_problem("compile", "int8", cuda)
    assert precision_problem("tensorrt", "int8", cuda) is None


@pytest.mark.skipif(HAS_TRT, reason="torch_tensorrt is installed here; this checks the behaviour without it")
def test_tensorrt_without_torch_tensorrt_is_a_config_error_when_fallback_is_off():
    request = BackendRequest(backend="tensorrt", fallback=False, input_size=SMALL)
    with pytest.raises(
        ConfigError, match=r"model\.backend: tensorrt cannot run here: torch_tensorrt cannot be imported"
    ):
        select_backend(_erfnet(), request)
    # The same through the configuration: the perception core refuses to start.
    config = load_config(None, ["model.backend=tensorrt", "model.fallback=false", "alerts.threshold=0"])
    with pytest.raises(ConfigError, match=r"fallback=true to fall back to compile -> eager"):
        Perception(_erfnet(), config)


def test_unsupported_precision_is_an_error_without_fallback_and_fp32_with_it(caplog):
    model = _erfnet()
    with pytest.raises(ConfigError, match=r"model\.precision: fp16 needs a CUDA device"):
        select_backend(model, BackendRequest(backend="eager", precision="fp16", fallback=False, input_size=SMALL))
    with pytest.raises(ConfigError, match=r"model\.precision: int8 runs only on the tensorrt backend"):
        select_backend(model, BackendRequest(backend="eager", precision="int8", fallback=False, input_size=SMALL))
    with caplog.at_level(logging.WARNING, logger="anomaly_seg_ros.inference.backends"):
        backend = select_backend(model, BackendRequest(backend="eager", precision="fp16", input_size=SMALL))
    assert backend.name == "eager" and backend.precision == "fp32"
    assert backend.skipped[0][0] == "precision" and "fp16 needs a CUDA device" in backend.skipped[0][1]
    assert "fp16 on eager" in caplog.text
    x = _input()
    torch.testing.assert_close(backend(x), model(x), rtol=1e-5, atol=1e-5)


def test_eager_channels_last_and_feature_graph_equal_the_plain_model():
    model = _erfnet()
    with torch.inference_mode():
        x = _input()
        reference = model.forward_with_features(x)
        backend = select_backend(model, BackendRequest(backend="auto", input_size=SMALL))
        assert backend.name == "eager" and "channels-last" in backend.describe()
        logits = backend(x)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, reference.logits, rtol=1e-4, atol=1e-4)
        output = backend.forward_with_features(x)
        torch.testing.assert_close(output.features, reference.features, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(output.head_logits, reference.head_logits, rtol=1e-4, atol=1e-4)
        # Another shape than the compiled one runs the eager model (offline tools may batch).
        batch = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(backend(batch), model(batch), rtol=1e-4, atol=1e-4)
        assert FeatureGraph(model)(x)[1].shape == (1, 16, SMALL[0] // 2, SMALL[1] // 2)


@pytest.mark.skipif(HAS_TRT, reason="torch_tensorrt is installed here; fallback is not exercised")
class TinySegmenter(nn.Module):
    """Conv-BN-ReLU and a 2x transposed-conv head: compiles in seconds, where ERFNet takes minutes on 2 cores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.ConvTranspose2d(8, 5, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x[:, :, ::2, ::2]))


def test_tensorrt_falls_back_to_compile_with_a_logged_reason_and_compile_agrees_with_eager(caplog):
    # The one torch.compile test (Inductor compiles C++ on CPU: slow), on a tiny network.
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    request = BackendRequest(backend="tensorrt", fallback=True, input_size=SMALL)
    with caplog.at_level(logging.WARNING, logger="anomaly_seg_ros.inference.backends"):
        backend = select_backend(model, request)
    assert backend.name == "compile" and backend.precision == "fp32"
    assert [name for name, _ in backend.skipped] == ["tensorrt"]
    assert "backend tensorrt skipped: torch_tensorrt cannot be imported" in caplog.text
    assert "running compile" in caplog.text and "skipped tensorrt" in backend.describe()
    x = _input(3)
    with torch.inference_mode():
        torch.testing.assert_close(backend(x), model(x), rtol=1e-4, atol=1e-4)


def test_perception_records_the_backend_that_runs_and_the_thread_setting():
    before = torch.get_num_threads()
    try:
        config = load_config(
            None, ["model.threads=1", "alerts.threshold=0", f"model.input_size=[{SMALL[0]}, {SMALL[1]}]"]
        )
        perception = Perception(_erfnet(), config)
        assert perception.backend_name == "eager" and perception.threads == 1 == torch.get_num_threads()
        assert configure_threads(0) == default_threads()  # 0: the thread policy's default
        with pytest.raises(ConfigError, match="model.threads"):
            load_config(None, ["model.threads=-1"])
    finally:
        torch.set_num_threads(before)


def test_calibration_images_are_read_and_preprocessed_like_frames(tmp_path):
    request = BackendRequest(input_size=(16, 32), int8_calibration=str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="is not a folder of images"):
        calibration_batches(request)
    with pytest.raises(DatasetError, match="needs a folder of calibration images"):
        calibration_batches(BackendRequest())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .png"):
        calibration_batches(BackendRequest(int8_calibration=str(tmp_path / "empty")))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(5)]
    for index, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    request = BackendRequest(
        input_size=(16, 32), int8_calibration=str(tmp_path), int8_calibration_images=3, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    batches = calibration_batches(request)
    assert len(batches) == 3
    # Evenly spaced over the sorted files: 0.png, 2.png, 4.png.
    for batch, frame in zip(batches, (frames[0], frames[2], frames[4]), strict=True):
        expected = normalize_images(frame_to_tensor(frame), (16, 32), (0.5,) * 3, (0.25,) * 3)
        torch.testing.assert_close(batch, expected)


def test_benchmark_cli_reports_every_stage_and_consistent_ratios(tmp_path):
    from anomaly_seg_ros.benchmarking.speed import STAGES, percentiles
    from anomaly_seg_ros.tools.cli import main

    stats = percentiles([4.0, 1.0, 3.0, 2.0])
    assert stats["p50"] == 2.5 and stats["mean"] == 2.5 and stats["p99"] == pytest.approx(3.97)
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["benchmark", "--input-size", "32", "64", "--frame-size", "40", "80", "--iterations", "2", "--warmup", "0"]
    assert main([*argv, "--scorers", "maxlogit,msp", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    report = json.loads(out_json.read_text())
    assert report["weights"].startswith("random") and report["backend"] == "eager"
    (result,) = report["results"]
    assert result["frame_size"] == [40, 80] and set(result["stages_ms"]) == set(STAGES)
    assert result["full_over_bare"] == pytest.approx(result["full_call_ms"]["p50"] / result["bare_forward_ms"]["p50"])
    for name in ("maxlogit", "msp"):
        scorer = report["scorers"][name]
        assert scorer["ratio_to_forward"] == pytest.approx(scorer["p50"] / report["bare_forward_ms"]["p50"])
    assert "full / bare" in out_md.read_text() and report["peak_host_rss_mb"] > 0
    assert main(["benchmark", "--scorers", "nosuch"]) == 2  # a clear error, not a traceback

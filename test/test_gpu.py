"""CUDA and TensorRT paths: run where a GPU is present, skipped (with the reason) elsewhere."""

import importlib.util

import numpy as np
import pytest
import torch

from anomaly_seg_ros.core.config import load_config
from anomaly_seg_ros.core.perception import Perception
from anomaly_seg_ros.inference import backends
from anomaly_seg_ros.inference.backends import BackendRequest, select_backend
from anomaly_seg_ros.inference.preprocess import FrameTransfer, frame_to_tensor
from anomaly_seg_ros.models import build_model

CUDA = torch.cuda.is_available()
TRT = CUDA and importlib.util.find_spec("torch_tensorrt") is not None
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_trt = pytest.mark.skipif(not TRT, reason="needs a CUDA GPU and torch_tensorrt")
SIZE = (64, 128)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("erfnet", num_classes=19).eval()


def _input(device: str = "cuda") -> torch.Tensor:
    return torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)).to(device)


@needs_trt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_agrees_with_eager(precision, tolerance):
    model = _model().cuda()
    x = _input()
    with torch.inference_mode():
        reference = model(x)
        backend = select_backend(
            model,
            BackendRequest(backend="tensorrt", precision=precision, device="cuda", fallback=False, input_size=SIZE),
        )
        assert backend.name == "tensorrt" and backend.precision == precision
        logits = backend(x)
    assert logits.dtype == torch.float32
    scale = reference.abs().max().item()
    torch.testing.assert_close(logits, reference, rtol=tolerance, atol=tolerance * scale)
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement > (0.999 if precision == "fp32" else 0.98)


@needs_trt
def test_tensorrt_engine_cache_reloads_without_recompiling(tmp_path, monkeypatch):
    import torch_tensorrt

    model = _model().cuda()
    request = BackendRequest(
        backend="tensorrt", device="cuda", fallback=False, input_size=SIZE, engine_cache=str(tmp_path)
    )
    x = _input()
    with torch.inference_mode():
        first = select_backend(model, request)
        assert first.cache_status == "missing"
        expected = first(x)

        def no_compile(*args, **kwargs):
            raise AssertionError("a cached engine must be loaded, not compiled")

        monkeypatch.setattr(torch_tensorrt.dynamo, "compile", no_compile)
        second = select_backend(model, request)
        assert second.cache_status == "hit"
        torch.testing.assert_close(second(x), expected, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_cuda_pipeline_equals_the_cpu_pipeline():
    frame = np.random.default_rng(0).integers(0, 256, (96, 200, 3), dtype=np.uint8)
    results = {}
    for device in ("cpu", "cuda"):
        config = load_config(
            None,
            [f"model.device={device}", "model.backend=eager", f"model.input_size=[{SIZE[0]}, {SIZE[1]}]"]
            + ["alerts.threshold=100"],
        )
        results[device] = Perception(_model(), config)(frame, render_color=False, render_overlay=False)
    cpu, cuda = results["cpu"], results["cuda"]
    np.testing.assert_allclose(cuda.anomaly, cpu.anomaly, rtol=1e-3, atol=1e-3)
    assert (cuda.labels == cpu.labels).mean() > 0.999  # only float near-ties may differ


@needs_cuda
@pytest.mark.parametrize("extra", [[], ["model.cuda_graphs=true", "model.heatmap_dtype=float16"]])
def test_cuda_far_field_equals_the_cpu_far_field(extra):
    """Two forward passes per frame on the device (the crop a slice of the uploaded frame, fused
    there): the same maps as on the CPU; with CUDA graphs the second replay must not overwrite the
    first pass's scores."""
    frame = np.random.default_rng(3).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    settings = ["model.backend=eager", f"model.input_size=[{SIZE[0]}, {SIZE[1]}]", "alerts.threshold=100"]
    settings += ["far_field.zoom=2", "far_field.center=[0.4, 0.6]"]
    results = {}
    for device, more in (("cpu", []), ("cuda", extra)):
        config = load_config(None, [f"model.device={device}", *settings, *more])
        results[device] = Perception(_model(), config)(frame, render_color=False, render_overlay=False)
    cpu, cuda = results["cpu"], results["cuda"]
    tolerance = 2e-2 if extra else 1e-3
    np.testing.assert_allclose(cuda.anomaly, cpu.anomaly, rtol=tolerance, atol=tolerance)
    assert (cuda.labels == cpu.labels).mean() > 0.999


@needs_cuda
def test_float16_heatmap_download_stays_close_and_is_returned_as_float32():
    frame = np.random.default_rng(1).integers(0, 256, (96, 200, 3), dtype=np.uint8)
    out = {}
    for dtype in ("float32", "float16"):
        config = load_config(
            None,
            ["model.device=cuda", "model.backend=eager", f"model.heatmap_dtype={dtype}", "alerts.threshold=100"]
            + [f"model.input_size=[{SIZE[0]}, {SIZE[1]}]"],
        )
        out[dtype] = Perception(_model(), config)(frame, render_color=False, render_overlay=False).anomaly
    assert out["float16"].dtype == np.float32
    np.testing.assert_allclose(out["float16"], out["float32"], rtol=2e-3, atol=2e-2)


@needs_cuda
def test_frame_transfer_round_trip_and_buffers_are_not_shared_between_frames():
    transfer = FrameTransfer("cuda")
    rng = np.random.default_rng(2)
    first, second = (rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(2))
    tensor_a = transfer.upload(first)
    tensor_b = transfer.upload(second)  # reuses the pinned buffer after the first copy finished
    torch.testing.assert_close(tensor_a.cpu(), frame_to_tensor(first))
    torch.testing.assert_close(tensor_b.cpu(), frame_to_tensor(second))
    kept = transfer.download(tensor_a[0, 0])[0]
    again = transfer.download(tensor_b[0, 0])[0]  # same pinned buffer index: the kept array must not change
    np.testing.assert_array_equal(kept, first[:, :, 0])
    np.testing.assert_array_equal(again, second[:, :, 0])


@needs_cuda
@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_cuda_graphs_and_fp16_agree_with_eager(backend):
    model = _model().cuda()
    x = _input()
    with torch.inference_mode():
        reference = model(x)
        graphed = select_backend(
            model, BackendRequest(backend=backend, device="cuda", cuda_graphs=True, fallback=False, input_size=SIZE)
        )
        torch.testing.assert_close(graphed(x), reference, rtol=1e-3, atol=1e-3)
        kept = graphed(x)
        graphed(_input() * 0.5)  # a later replay must not overwrite an output the caller kept
        torch.testing.assert_close(kept, reference, rtol=1e-3, atol=1e-3)
        half = select_backend(
            model, BackendRequest(backend=backend, device="cuda", precision="fp16", fallback=False, input_size=SIZE)
        )
        assert half.precision == "fp16"
        logits = half(x)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, rtol=5e-2, atol=5e-2 * reference.abs().max().item())


@needs_cuda
def test_auto_on_cuda_tries_tensorrt_first():
    model = _model().cuda()
    backend = select_backend(model, BackendRequest(backend="auto", device="cuda", input_size=SIZE))
    expected = "tensorrt" if TRT else "compile"
    assert backend.name == expected
    if not TRT:
        assert backend.skipped[0][0] == "tensorrt"
    assert backends.candidate_order("auto", "cuda", fallback=True)[0] == "tensorrt"

"""ONNX Runtime and OpenVINO backends: agreement with eager, engine cache, precision and selection rules.

Each installed runtime is checked against the eager network (logits within 1e-4, labels
equal); a runtime that is not installed is skipped here and must be a logged, reasoned skip
in backend selection.
"""

import importlib.util
import logging

import pytest
import torch
from torch import nn

from anomaly_seg_ros.common.errors import ConfigError
from anomaly_seg_ros.inference import cpu_runtimes
from anomaly_seg_ros.inference.backends import (
    CPU_AUTO_ORDER,
    CPU_RUNTIME_MIN_PIXELS,
    BackendRequest,
    FeatureGraph,
    candidate_order,
    precision_problem,
    select_backend,
)
from anomaly_seg_ros.inference.engine_cache import EngineCache, make_key
from anomaly_seg_ros.models import build_model

SMALL = (32, 64)
RUNTIMES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} is not installed"),
    )
    for name in ("onnxruntime", "openvino")
]


def _erfnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("erfnet", num_classes=19).eval()


def _inputs() -> list[torch.Tensor]:
    return [torch.rand(1, 3, *SMALL, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_agrees_with_eager(runtime):
    model = _erfnet()
    backend = select_backend(model, BackendRequest(backend=runtime, fallback=False, input_size=SMALL))
    assert backend.name == runtime and backend.precision == "fp32" and backend.cache_status is None
    with torch.inference_mode():
        for x in _inputs():
            reference = model(x)
            logits = backend(x)
            assert logits.dtype == torch.float32 and logits.shape == reference.shape
            torch.testing.assert_close(logits, reference, rtol=0, atol=1e-4)
            assert torch.equal(logits.argmax(1), reference.argmax(1))
        # another shape than the exported one runs the eager network
        batch = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(backend(batch), model(batch), rtol=0, atol=1e-5)


class TinySegmenter(nn.Module):
    """Conv-BN-ReLU and a 1x1 head: exports in a fraction of ERFNet's time."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnx_file_is_cached_keyed_like_every_engine_and_rebuilt_for_new_weights(tmp_path):
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    request = BackendRequest(backend="onnxruntime", fallback=False, input_size=SMALL, engine_cache=str(tmp_path))
    first = select_backend(model, request)
    assert first.cache_status == "missing"
    key = make_key(model, input_shape=request.input_shape, precision="fp32", backend="onnx", device="cpu")
    cache = EngineCache(tmp_path)
    assert cache.engine_path(key).suffix == ".onnx" and cache.status(key)[0] == "hit"
    again = select_backend(model, request)
    assert again.cache_status == "hit" and "loaded from the cache" in again.describe()
    x = _inputs()[0]
    with torch.inference_mode():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=1e-5)
    # New weights: the cached file is stale and rebuilt, never run.
    with torch.no_grad():
        model.head.bias.add_(1.0)
    rebuilt = select_backend(model, request)
    assert rebuilt.cache_status == "stale"
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=1e-5)
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".json", ".onnx"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_feature_graph_agrees_and_leaves_the_network_in_eval_mode(runtime):
    model = _erfnet()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    backend = select_backend(model, BackendRequest(backend=runtime, fallback=False, input_size=SMALL), features=True)
    # The exporter restores the wrapper's training flag after tracing: the network must stay in
    # eval mode with unchanged batch-norm statistics (it once came back in training mode).
    assert not model.training and not any(module.training for module in model.modules())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    with torch.inference_mode():
        x = _inputs()[1]
        reference = model.forward_with_features(x)
        output = backend.forward_with_features(x)
    for got, expected in (
        (output.logits, reference.logits),
        (output.features, reference.features),
        (output.head_logits, reference.head_logits),
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_feature_graph_starts_in_the_networks_mode():
    model = _erfnet()
    assert not FeatureGraph(model).training
    assert FeatureGraph(model.train()).training


def test_selection_order_and_precision_rules():
    installed = tuple(name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None)
    large = (CPU_RUNTIME_MIN_PIXELS // 256, 256)
    assert candidate_order("auto", "cpu", fallback=True, input_size=large) == (*installed, "eager")
    assert tuple(CPU_AUTO_ORDER) == ("onnxruntime", "openvino", "eager")
    # small inputs: the export would cost more at start-up than the runtime saves
    assert candidate_order("auto", "cpu", fallback=True, input_size=SMALL) == ("eager",)
    assert candidate_order("openvino", "cpu", fallback=True) == ("openvino", "eager")
    assert candidate_order("onnxruntime", "cpu", fallback=False) == ("onnxruntime",)
    cpu = torch.device("cpu")
    assert precision_problem("openvino", "bf16", cpu) is None
    assert "only on the openvino backend" in precision_problem("onnxruntime", "bf16", cpu)
    assert "only on the openvino backend" in precision_problem("eager", "bf16", cpu)


def test_missing_runtime_is_a_reasoned_error_or_a_logged_fallback(monkeypatch, caplog):
    def not_installed(name: str) -> None:
        raise cpu_runtimes.RuntimeUnavailable(f"{name} cannot be imported (ModuleNotFoundError); install the extra")

    monkeypatch.setattr(cpu_runtimes, "require", not_installed)
    model = _erfnet()
    with pytest.raises(ConfigError, match=r"model\.backend: onnxruntime cannot run here: onnxruntime cannot be imp"):
        select_backend(model, BackendRequest(backend="onnxruntime", fallback=False, input_size=SMALL))
    with caplog.at_level(logging.WARNING, logger="anomaly_seg_ros.inference.backends"):
        backend = select_backend(model, BackendRequest(backend="openvino", fallback=True, input_size=SMALL))
    assert backend.name == "eager" and [name for name, _ in backend.skipped] == ["openvino"]
    assert "backend openvino skipped: openvino cannot be imported" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_bf16_runs_only_where_the_cpu_has_it():
    problem = cpu_runtimes.openvino_supports("bf16")
    model = _erfnet()
    request = BackendRequest(backend="openvino", precision="bf16", fallback=False, input_size=SMALL)
    if problem is not None:
        assert "BF16 support" in problem
        with pytest.raises(ConfigError, match="bf16 needs a CPU with BF16 support"):
            select_backend(model, request)
    else:
        backend = select_backend(model, request)
        assert backend.precision == "bf16"
        x = _inputs()[0]
        with torch.inference_mode():
            agreement = (backend(x).argmax(1) == model(x).argmax(1)).float().mean().item()
        assert agreement > 0.9


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_export_command_caches_the_onnx_file_and_reports_agreement_with_eager(tmp_path, capsys):
    import json

    from anomaly_seg_ros.core.config import load_config
    from anomaly_seg_ros.core.perception import Perception
    from anomaly_seg_ros.models import save_checkpoint
    from anomaly_seg_ros.tools.cli import main

    checkpoint = save_checkpoint(_erfnet(), tmp_path / "net.safetensors", metadata={"input_size": list(SMALL)})
    argv = ["export", "--checkpoint", str(checkpoint), "--backend", "onnxruntime", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "engines"), "--agreement-frames", "2"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["engine"].endswith(".onnx") and record["status_before"] == "missing"
    agreement = record["agreement_with_eager_fp32"]
    assert agreement["frames"] == 2 and agreement["label_agreement"] == 1.0
    assert 0.0 <= agreement["max_abs_logit_diff"] < 1e-4
    # The pipeline configured with the same cache loads the file instead of exporting again.
    overrides = [f"model.weights={checkpoint}", "model.backend=onnxruntime", "alerts.threshold=0"]
    config = load_config(None, [*overrides, f"model.engine_cache={tmp_path / 'engines'}"])
    perception = Perception.from_config(config)
    assert perception.backend_name == "onnxruntime" and perception.backend.cache_status == "hit"


def test_auto_on_cpu_keeps_the_fastest_candidate_it_timed_and_agrees_with_eager():
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    size = (128, CPU_RUNTIME_MIN_PIXELS // 128)  # large enough for the runtimes to be tried
    backend = select_backend(model, BackendRequest(backend="auto", input_size=size))
    installed = [name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None]
    assert sorted(backend.selection) == sorted([*installed, "eager"])
    assert backend.name == min(backend.selection, key=backend.selection.get)
    assert "fastest at start-up of" in backend.describe() and backend.cache_status is None
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(backend(x), model(x), rtol=0, atol=1e-5)


def test_peer_benchmark_script_measures_every_backend_and_rewrites_only_its_readme_block(tmp_path):
    import importlib.util as util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_runtimes.py"
    spec = util.spec_from_file_location("cpu_runtimes_benchmark", path)
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.measure((16, 32), rounds=3, warmup=0, model_name="erfnet")
    installed = [name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None]
    assert list(result["backends"]) == ["eager (plain, fp32)", "auto", "eager", *installed]
    for entry in result["backends"].values():
        assert entry["max_abs_logit_diff"] < 1e-4 and entry["label_agreement"] == 1.0
    plain = result["backends"]["eager (plain, fp32)"]["p50"]
    auto = result["backends"]["auto"]
    assert auto["vs_eager"] == pytest.approx(auto["p50"] / plain)
    fastest = result["backends"][result["fastest"]]
    assert result["fastest"] != "auto" and result["auto_over_fastest"] == pytest.approx(auto["p50"] / fastest["p50"])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.MARKERS[0]}\nold\n{script.MARKERS[1]}\noutro\n", encoding="utf-8")
    script.write_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{script.MARKERS[0]}\nnew table\n{script.MARKERS[1]}\noutro\n"

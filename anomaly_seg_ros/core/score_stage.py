"""The score stage of the pipeline: anomaly scores and labels from one forward pass, fused.

A logit scorer (MSP, energy, MaxEntropy, MaxLogit: a pure ``score(logits, **params)``) and
the label arg-max both reduce the same ``(N, C, H, W)`` logits over the class axis. Run one
after the other in eager PyTorch they cost 3-6 passes over the logits and full-size
temporaries (``z - max``, ``exp``); on 19x512x1024 logits that was 4-8 % of the CPU forward
(issue 14). ``torch.compile`` turns the scorer's formula and the arg-max into one generated
kernel (C++/OpenMP on CPU, Triton on CUDA) that reads each pixel's C logits once and writes
only the score and the uint8 label: the passes the formulas allow, on the layout the backend
produces (the kernel is generated for the logits' strides, channels-last or NCHW).

Compilation costs seconds (tens on a loaded 2-core CPU; Inductor's on-disk cache makes a
later start with the same shape cheap), so :meth:`ScoreStage.warm_up` compiles at start-up
and when the scorer is switched, on a dummy tensor of the network's output shape and layout,
never on a camera frame. It compiles on CUDA, and on CPU when the logits have at least
:data:`COMPILE_MIN_ELEMENTS` values (below that the eager formulas take well under a
millisecond and a compile is not worth its start-up time). Anything else, a scorer that reads
features or the network, or a compile that fails (logged once, with the reason), runs the
scorer's own eager code and :func:`labels_from_logits`, which are the reference the compiled
kernel is tested against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from anomaly_seg_ros.inference.preprocess import labels_from_logits
from anomaly_seg_ros.models.outputs import SegmentationOutput
from anomaly_seg_ros.scoring import Scorer
from anomaly_seg_ros.scoring.base import check_logits

LOGGER = logging.getLogger(__name__)

#: Smallest logits (N*C*H*W values) for which the CPU score stage is compiled (19x256x256).
COMPILE_MIN_ELEMENTS = 19 * 256 * 256

Fused = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def fusable(scorer: Scorer) -> bool:
    """Whether the scorer is a pure function of the logits (its ``compute`` is the static ``score``)."""
    return (
        not scorer.requires_features
        and not scorer.requires_model
        and not scorer.requires_fit
        and type(scorer).compute is Scorer.compute
    )


def fused_function(scorer: Scorer) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``logits -> (scores, uint8 labels)`` written as one function for the compiler to fuse.

    A scorer may give its formula in a compiler-friendly form as ``fused_score`` (MaxEntropy);
    otherwise its ``score`` is compiled as it is.
    """
    score = getattr(type(scorer), "fused_score", type(scorer).score)
    params = dict(scorer.params)

    def scores_and_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return score(logits, **params), logits.argmax(dim=1).to(torch.uint8)

    return scores_and_labels


class ScoreStage:
    """``(scores, labels)`` of one forward pass: compiled and fused where it pays, eager otherwise."""

    def __init__(self, scorer: Scorer, *, compile_scorer: bool | None = None) -> None:
        self.scorer = scorer
        #: None = decide by device and size (see the module docstring); True/False force it.
        self.compile_scorer = compile_scorer
        #: Compiled functions per (shape, strides, dtype, device) they were warmed up for.
        self._compiled: dict[tuple, Fused] = {}
        #: Why the stage runs eager although it would be compiled; None when it was not tried or worked.
        self.fallback_reason: str | None = None

    @staticmethod
    def _signature(logits: torch.Tensor) -> tuple:
        return (tuple(logits.shape), logits.stride(), logits.dtype, logits.device)

    def _wants_compile(self, logits: torch.Tensor) -> bool:
        if self.compile_scorer is not None:
            return self.compile_scorer and fusable(self.scorer)
        if not fusable(self.scorer) or logits.shape[1] > 256:
            return False
        return logits.device.type == "cuda" or logits.numel() >= COMPILE_MIN_ELEMENTS

    @property
    def compiled(self) -> bool:
        """Whether a compiled kernel is ready (for at least one shape)."""
        return bool(self._compiled)

    def warm_up(self, logits: torch.Tensor) -> None:
        """Compile for ``logits``' shape and layout now (start-up), so no frame pays for it."""
        if not self._wants_compile(logits) or self._signature(logits) in self._compiled:
            return
        function = torch.compile(fused_function(self.scorer), dynamic=False, fullgraph=True)
        try:
            with torch.inference_mode():
                function(logits)
        except Exception as error:  # noqa: BLE001  (no C++ compiler, unsupported op: the eager code runs)
            first_line = (str(error).splitlines() or [""])[0][:200]
            self.fallback_reason = f"torch.compile of the {self.scorer.name} score stage failed: {type(error).__name__}"
            self.fallback_reason += f": {first_line}" if first_line else ""
            LOGGER.warning("score stage: %s; running eager", self.fallback_reason)
            self.compile_scorer = False
            return
        self._compiled[self._signature(logits)] = function

    def _compiled_for(self, logits: torch.Tensor) -> Fused | None:
        compiled = self._compiled.get(self._signature(logits)) if self._compiled else None
        if compiled is not None:
            check_logits(logits)
        return compiled

    def __call__(self, output: SegmentationOutput) -> tuple[torch.Tensor, torch.Tensor]:
        compiled = self._compiled_for(output.logits)
        if compiled is not None:
            return compiled(output.logits)
        return self.scorer(output), labels_from_logits(output.logits)

    def scores(self, output: SegmentationOutput) -> torch.Tensor:
        """The scores alone (the far field's crop needs no labels): the compiled kernel's, whose
        label output costs one uint8 write, else the scorer's eager code without the label pass."""
        compiled = self._compiled_for(output.logits)
        return compiled(output.logits)[0] if compiled is not None else self.scorer(output)

    def describe(self) -> str:
        if self._compiled:
            return f"{self.scorer.name} + labels, one compiled kernel"
        return f"{self.scorer.name} + labels, eager" + (f" ({self.fallback_reason})" if self.fallback_reason else "")

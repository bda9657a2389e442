"""What a segmentation network returns when more than its logits is needed.

Every network in the registry has two entry points:

- ``forward(x) -> logits (N, C, H, W)``: the inference graph, a plain tensor function that
  ``torch.compile``, ``torch.export`` and Torch-TensorRT take as it is;
- ``forward_with_features(x) -> SegmentationOutput``: the same pass, also returning what
  feature-based scorers (PGU) and training losses (IsoMax+, auxiliary heads) need, without
  a second forward or a hook.

Each network also names its ``last_layer`` (the module that maps ``features`` to
``head_logits``); ``logits`` is ``head_logits`` after parameter-free upsampling, or the same
tensor when the last layer already works at input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SegmentationOutput:
    """One forward pass of a segmentation network."""

    #: (N, C, H, W) class logits at the network's input resolution.
    logits: torch.Tensor
    #: (N, F, h, w) input of the network's last layer (its penultimate activations).
    features: torch.Tensor | None = None
    #: (N, C, h', w') output of the last layer before any parameter-free upsampling.
    head_logits: torch.Tensor | None = None
    #: Auxiliary logits used only in training (BiSeNet's context heads); empty in eval mode.
    aux_logits: tuple[torch.Tensor, ...] = ()
    #: (N, 3, H, W) the normalised network input, for scorers that run more passes (ODIN, ensembles).
    inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.head_logits is None:
            self.head_logits = self.logits

"""All K charts at once, for charts built from the built-in ResidualMLP: `stack_mlp_charts` stacks
the K charts' weights along a leading K axis, the dict that the all-K reference `charts_log_prob`
and its fused kernel (`charts_log_prob_fused`, patchreg.ops.charts) take.

`charts_log_prob` itself lives in patchreg.reference.charts (the pure-PyTorch references are kept
out of the model packages) and is re-exported here.
"""

from __future__ import annotations

import torch

from ..reference.charts import charts_log_prob
from .architectures import ResidualMLP
from .fif_chart import FreeFormChart

__all__ = ["charts_log_prob", "stack_mlp_charts"]


def _stack_mlp(nets: list[ResidualMLP], prefix: str) -> dict:
    out = {}
    for name, _ in nets[0].named_parameters():
        out[f"{prefix}.{name}"] = torch.stack([dict(n.named_parameters())[name].detach() for n in nets])
    return out


def stack_mlp_charts(model) -> dict:
    """Stacked parameters {"center" (K,n), "basis" (K,n,n), "scale" (K,), "encoder.*"/"decoder.*" (K, ...)}."""
    charts = list(model.charts)
    if not all(isinstance(c, FreeFormChart) and isinstance(c.encoder, ResidualMLP) and isinstance(c.decoder, ResidualMLP)
               for c in charts):
        raise TypeError("stack_mlp_charts needs charts with built-in ResidualMLP encoder and decoder (family 'fif', architecture 'mlp')")
    params = {
        "center": torch.stack([c.center for c in charts]),
        "basis": torch.stack([c.basis for c in charts]),
        "scale": torch.stack([c.scale for c in charts]),
    }
    params.update(_stack_mlp([c.encoder for c in charts], "encoder"))
    params.update(_stack_mlp([c.decoder for c in charts], "decoder"))
    return params

"""Chart-mixture checkpoints (kind "charts"): safetensors + JSON header via patchreg.io, atomic.

Tensors: "model/<state_dict key>", and for resumable training "optim/<param index>/<name>",
"rng/data" (the batch stream's generator state) and "train/centers" (seeding clusters), "train/log_alpha_running" (the mixing weights before the final
re-estimation, which resuming continues from).
The header holds the model config (enough to rebuild it with build_mixture), the training
config, step and history.
"""

from __future__ import annotations

import torch

from ..io import load_checkpoint, save_checkpoint

KIND = "charts"


def save_mixture(path, model, optimizer=None, generator=None, centers=None, step=None, history=None,
                 train_config=None, log_alpha_running=None, extra_tensors=None, extra_header=None):
    """Write the model (and, for resumable training, its training state) atomically.

    extra_tensors / extra_header: more entries for models built on a mixture (the patch model of
    patchreg.priors.patch_charts stores its basis and selector there)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra_tensors or {})
    header = {"model": model.config, **(extra_header or {})}
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        for idx, state in opt_state["state"].items():
            for name, value in state.items():
                tensors[f"optim/{idx}/{name}"] = torch.as_tensor(value)
        header["optimizer"] = {"param_groups": opt_state["param_groups"]}
    if generator is not None:
        tensors["rng/data"] = generator.get_state()
    if centers is not None:
        tensors["train/centers"] = centers
    if log_alpha_running is not None:
        tensors["train/log_alpha_running"] = log_alpha_running
    if step is not None:
        header["training"] = {"step": step, "history": history or [], "config": train_config or {}}
    return save_checkpoint(path, KIND, tensors, header)


def load_mixture(path, dtype=torch.float64):
    """(model, header) from a charts checkpoint."""
    from .mixture import build_mixture

    tensors, header = load_checkpoint(path, KIND)
    if "model" not in header:
        raise ValueError(f"{path} has no model config in its header")
    model = build_mixture(**header["model"]).to(dtype)
    model.load_state_dict({k[len("model/"):]: v.to(dtype) if v.is_floating_point() else v
                           for k, v in tensors.items() if k.startswith("model/")})
    return model, header


def load_mixture_state(path, model, optimizer, generator) -> dict:
    """Restore model, optimizer and generator in place for resuming; returns step, history, centers, config."""
    tensors, header = load_checkpoint(path, KIND)
    if header.get("model") != model.config:
        raise ValueError(f"{path} holds a different chart model ({header.get('model')}) than {model.config}")
    if "training" not in header:
        raise ValueError(f"{path} has no training state to resume from")
    dtype = model.log_alpha.dtype
    model.load_state_dict({k[len("model/"):]: v.to(dtype) if v.is_floating_point() else v
                           for k, v in tensors.items() if k.startswith("model/")})
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/")
            state.setdefault(int(idx), {})[name] = value.to(dtype) if name != "step" else value
    if "optimizer" in header:
        optimizer.load_state_dict({"state": state, "param_groups": header["optimizer"]["param_groups"]})
    if "rng/data" in tensors:
        generator.set_state(tensors["rng/data"])
    training = header["training"]
    running = tensors.get("train/log_alpha_running")
    return dict(step=training["step"], history=training["history"], train_config=training["config"],
                log_alpha_running=None if running is None else running.to(dtype),
                centers=tensors.get("train/centers", torch.empty(0)).to(dtype))

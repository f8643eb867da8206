"""Per-layer gradient norms: how much gradient reaches each capsule layer.

For every capsule layer, on sampled steps:
- ``weight``: L2 norm of the gradients of the layer's own parameters;
- ``input``: L2 norm of the gradient w.r.t. everything the layer received
  (pose and activation for capsule inputs, the feature map for primary capsules);
- ``input_activation``: the same, only for the incoming capsule activations.
Plus ``backbone``: the norm over parameters outside the capsule layers
(``model.backbone`` when the model names one).

Input gradients are caught with a tensor hook registered by a forward pre-hook,
so the model returns nothing special. Norms stay on the device until ``flush``.

Example::

    gn = GradNorms(model, every=50)
    if gn.due(step):
        with gn.watch():
            loss = loss_fn(model(x), y)
            loss.backward()
        gn.collect()
    epoch_mean, last = gn.flush()   # {"conv1": {"weight": ..., "input": ...}, "backbone": {...}}
    rho, top = input_ratio(last, "conv1")     # how much of the gradient reaches the bottom of the stack

``input_ratio`` is the one definition of the gradient ratio rho that the long-cpu questions (gradient flow),
the remedies verdicts (criterion C) and the initialisation measurements all use; ``input_gradient_ratio``
measures it with one backward pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from capsbench.metrics.layers import capsule_layers, telemetry_blocks


class GradNorms:
    def __init__(self, model: nn.Module, every: int = 50):
        self.every = int(every)
        self.layers = capsule_layers(model) + telemetry_blocks(model)
        self._params = {layer.name: [p for p in layer.module.parameters() if p.requires_grad] for layer in self.layers}
        self._params["backbone"] = _backbone_params(model, self.layers)
        self._input_sq: dict[str, torch.Tensor] = {}
        self._act_sq: dict[str, torch.Tensor] = {}
        self._hooked: set[str] = set()
        self._samples: list[dict[str, dict[str, torch.Tensor]]] = []

    def due(self, step: int) -> bool:
        """Sample on steps 0, every, 2*every, ... (never when ``every`` <= 0)."""
        return self.every > 0 and step % self.every == 0

    @contextmanager
    def watch(self):
        """Around the forward and backward pass of one sampled step."""
        self._input_sq, self._act_sq, self._hooked = {}, {}, set()
        handles = [layer.module.register_forward_pre_hook(self._pre_hook(layer.name)) for layer in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, name: str):
        def hook(module, args):
            # Once per step: activation checkpointing re-runs forward during backward.
            if name in self._hooked or not torch.is_grad_enabled():
                return
            self._hooked.add(name)
            for tensor, is_activation in _input_tensors(args):
                if tensor.requires_grad:
                    tensor.register_hook(self._grad_hook(name, is_activation))

        return hook

    def _grad_hook(self, name: str, is_activation: bool):
        def hook(grad: torch.Tensor):
            sq = grad.detach().to(torch.float32).pow(2).sum()
            self._input_sq[name] = self._input_sq[name] + sq if name in self._input_sq else sq
            if is_activation:
                self._act_sq[name] = self._act_sq[name] + sq if name in self._act_sq else sq

        return hook

    def collect(self, grad_scale: float = 1.0) -> dict[str, dict[str, torch.Tensor]]:
        """Read the norms of the step just back-propagated (call after backward).

        ``grad_scale``: the loss scale of an fp16 GradScaler, divided out of input
        gradients (unscale the optimizer first for the weight gradients).
        """
        sample: dict[str, dict[str, torch.Tensor]] = {}
        for name, params in self._params.items():
            entry = {"weight": _norm([p.grad for p in params if p.grad is not None])}
            if name in self._input_sq:
                entry["input"] = self._input_sq[name].sqrt() / grad_scale
            if name in self._act_sq:
                entry["input_activation"] = self._act_sq[name].sqrt() / grad_scale
            sample[name] = entry
        self._samples.append(sample)
        return sample

    def flush(self) -> tuple[dict, dict]:
        """(mean over the samples since the last flush, the last sample), as floats; one sync."""
        samples, self._samples = self._samples, []
        if not samples:
            return {}, {}
        as_float = [{n: {k: float(v) for k, v in e.items()} for n, e in s.items()} for s in samples]
        mean = {
            name: {key: sum(s[name][key] for s in as_float) / len(as_float) for key in entry}
            for name, entry in as_float[-1].items()
            if all(name in s for s in as_float)
        }
        return mean, as_float[-1]


def input_ratio(norms: dict | None, first: str | None) -> tuple[float | None, float | None]:
    """``(rho, top)`` from one sample (or epoch mean) of gradient norms: ``top = |dL/d input of the class
    capsules|`` and ``rho = |dL/d input of layer first| / top`` (``first``: the first stacked layer, conv1).

    rho says how much of the loss gradient reaches the bottom of the stack relative to its top: ~1 when it flows,
    << 1 when it vanishes toward the input, >> 1 when it explodes. On the long-cpu grid both inputs are 16 types x
    16 pose entries at one position, so it is scale-free (docs/remedies.md, criterion C). rho is None without both
    norms or when ``top`` is 0 (no gradient reaches even the class capsules: a constant output).
    """
    norms = norms or {}
    bottom = (norms.get(first) or {}).get("input") if first else None
    top = (norms.get("class") or {}).get("input")
    top = None if top is None else float(top)
    return (None if bottom is None or not top else float(bottom) / top), top


def input_gradient_ratio(model: nn.Module, inputs: torch.Tensor, first: str = "conv1") -> float | None:
    """rho (``input_ratio``) after one backward pass of a class-weighted sum of ``model(inputs)``: a loss whose
    gradient differs per class, so a model that treats the classes alike still gets one (the model's state, e.g.
    BatchNorm's training mode, is the caller's)."""
    norms = GradNorms(model, every=1)
    model.zero_grad(set_to_none=True)
    with norms.watch():
        out = model(inputs)
        (out * torch.arange(1.0, 1.0 + out.shape[-1], device=out.device)).sum().backward()
    norms.collect()
    _, last = norms.flush()
    return input_ratio(last, first)[0]


def _norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def _backbone_params(model: nn.Module, layers) -> list[nn.Parameter]:
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return [p for p in backbone.parameters() if p.requires_grad]
    inside = {id(p) for layer in layers for p in layer.module.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in inside]


def _input_tensors(obj, is_activation: bool = False):
    """Yield (tensor, is_capsule_activation) for every tensor in a layer's positional arguments."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj, is_activation
    elif hasattr(obj, "pose") and hasattr(obj, "activation"):  # Capsules
        yield from _input_tensors(obj.pose)
        yield from _input_tensors(obj.activation, True)
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _input_tensors(item)

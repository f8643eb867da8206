"""Reversible momentum residual blocks over stacked capsule layers (``model.momentum_residual: GAMMA``).

Source: MoCapsNet (Gugglberger, Peer and Rodriguez-Sanchez 2022, "Momentum Capsule Networks", TMLR;
trained at 15 and 25 blocks), which wraps routed capsule layers in the momentum residual blocks of
Sander et al. 2021 ("Momentum Residual Neural Networks", ICML), gamma 0.9 by default, velocity
starting at zero. With a block's function ``f`` (one stacked ``ConvCaps`` layer here)::

    v[n+1] = gamma * v[n] + (1 - gamma) * f(x[n])          x[n+1] = x[n] + v[n+1]

and exactly backwards ``x[n] = x[n+1] - v[n+1]``, ``v[n] = (v[n+1] - (1 - gamma) * f(x[n])) / gamma``:
the backward pass rebuilds each block's input from its output instead of storing it, so the memory
of the stack does not grow with depth, without checkpointing (``MomentumStack`` below keeps only
the last state and velocity).

What the state ``x`` of a capsule layer is (the choice capsbench makes, and why):

- **Poses add**, as in MoCapsNet: ``f``'s pose part is the layer's routed output pose, added
  without a re-squash (lengths may exceed 1, as with res-capsnet's skips).
- **Activations** cannot simply add (they must stay in [0, 1]) and cannot be taken from ``f``
  alone: ``f`` of block ``n`` needs block ``n``'s input activations, so they must be recoverable
  from the next state before ``f`` is evaluated, i.e. they must be part of ``x``. capsbench
  carries each capsule's activation *logit* ``l`` in the state, passes ``sigmoid(l)`` to the
  layer, and gives ``f`` the logit part ``logit(a_routed) - l`` (``a_routed`` clamped to
  ``[1e-6, 1 - 1e-6]`` so a dead capsule has a finite logit): the velocity pulls the logit towards
  that of the layer's own routed activation. At ``gamma = 0`` this is the plain stack's activation
  exactly (and poses get a ResNet skip). Adding ``logit(a_routed)`` itself would sum negative
  logits over depth (self routing's activations average 1/types) and kill every capsule by
  construction. The first state is the first stacked layer's output (``l = logit(a)``).
- The inverse never inverts ``f``, so the block is invertible for **every routing** (EM, VB, self,
  dynamic, uniform and plugins): the routing only has to be deterministic on a recomputation.
  Dynamic routing ignores child activations; its poses carry the block.

Which layers are blocks: stacked layers ``conv2..convN`` (``conv1`` changes the number of types
from the primary capsules and stays a plain layer, as MoCapsNet's first routed layer does), so
``depth <= 1`` has no block and the option changes nothing there. MoCapsNet's ``f`` is two routed
layers; capsbench's is one, so that depth still counts routed layers and the telemetry of every
layer is that of its own routed output (forward hooks see ``f``'s output, before the momentum
update, as with ``model.residual``). Incompatible with ``model.residual`` (two skip rules on the
same layers; refused when the spec loads); ``model.checkpointing`` still applies to ``conv1`` and
the class capsules (the builder turns it off inside blocks, which recompute anyway).

Recomputation, BatchNorm and randomness: the backward pass evaluates each block's ``f`` once more,
with gradients on, on the rebuilt input. BatchNorm inside ``f`` (pose BatchNorm after a layer,
VB's BatchNorms) normalises with the batch's statistics in training mode, so the recomputation
gives the forward's values up to the reconstruction error; its running statistics are restored
after the recomputation (``frozen_buffers``) so they move once per step. Without gradients
(evaluation, precise BatchNorm) the stack runs as a plain loop. A block with a stochastic module (dropout) is
refused: its recomputation would draw other numbers. Autocast is replayed as in the forward;
the state is kept in at least float32 (low-precision addition would make the inverse useless).

Reconstruction error: rebuilding ``v`` divides by ``gamma`` once per block, and ``f`` amplifies
what it is given, so rounding grows geometrically with depth. Measured in float32 (largest error of
a rebuilt block input relative to its largest entry; ``tests/test_momentum_residual.py``, 8 types of
4x4 poses on an 8x8 grid, gamma 0.9): self routing 2.0e-6, 1.6e-5, 7.2e-5 at 10, 20, 30 blocks; EM
4.6e-6, 9.6e-5, 1.3e-3. Gradients agree with plain autograd to 1e-10 of the largest gradient in
float64, and in float32 at depth 10 to 1e-3 of the largest float64 gradient (tested). Gradients of the
layer's inputs inside blocks are not reported by the gradient-norm telemetry (the recomputation
bypasses the layer's hooks, so nothing is counted twice); its weight gradients are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from capsbench.capsules.layers import frozen_buffers
from capsbench.capsules.types import Capsules

# Routed activations are clamped to [EPS, 1 - EPS] before their logit: a dead capsule keeps a finite state.
EPS = 1e-6

State = tuple[torch.Tensor, torch.Tensor]  # (pose [N, T, D, H, W], activation logit [N, T, H, W])


def momentum_stack(layers: Sequence[nn.Module], caps: Capsules, gamma: float, reversible: bool = True) -> Capsules:
    """Run ``caps`` through ``layers`` as momentum residual blocks; return what the last block passes on.

    ``reversible=True`` (the default) stores only the last state when gradients are needed and
    rebuilds the rest in the backward pass; ``False`` is the same maths through plain autograd
    (every block's graph kept): the oracle of the tests and the benchmark's comparison.
    """
    if not 0 < gamma < 1:
        raise ValueError(f"momentum gamma must be in (0, 1), got {gamma}")
    if not layers:
        return caps
    _refuse_stochastic(layers)
    dtype = caps.pose.dtype
    work = torch.promote_types(dtype, torch.float32)
    pose, logit = caps.pose.to(work), _logit(caps.activation.to(work))
    if reversible and torch.is_grad_enabled():
        params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
        pose, logit = MomentumStack.apply(gamma, tuple(layers), pose, logit, *params)
    else:
        (pose, logit), _ = trajectory(layers, (pose, logit), gamma)[-1]
    return Capsules(pose.to(dtype), torch.sigmoid(logit).to(dtype))


def trajectory(layers: Sequence[nn.Module], state: State, gamma: float) -> list[tuple[State, State]]:
    """``[(x[n], v[n]) for n = 0..N]``: every block's state ``(pose, logit)`` and velocity, forward.

    Gradients flow through it when they are enabled (the plain-autograd path).
    """
    velocity = (torch.zeros_like(state[0]), torch.zeros_like(state[1]))  # Sander et al.: v[0] = 0
    out = [(state, velocity)]
    for layer in layers:
        f = _f(layer, state)  # through __call__: the layer's forward hooks (telemetry) see its output once
        velocity = tuple(gamma * v + (1 - gamma) * fx for v, fx in zip(velocity, f, strict=True))
        state = tuple(x + v for x, v in zip(state, velocity, strict=True))
        out.append((state, velocity))
    return out


def rebuild(layers: Sequence[nn.Module], state: State, velocity: State, gamma: float) -> list[State]:
    """``[x[N-1], ..., x[0]]`` rebuilt from the last state and velocity alone, as the backward pass does."""
    out = []
    with torch.no_grad():
        for layer in reversed(layers):
            state = _previous_state(state, velocity)
            with frozen_buffers(layer):
                velocity = _previous_velocity(velocity, _f(layer.forward, state), gamma)
            out.append(state)
    return out


class MomentumStack(torch.autograd.Function):
    """The whole stack as one autograd node: saves the last state and velocity, nothing per block.

    ``forward(ctx, gamma, layers, pose, logit, *params) -> (pose, logit)`` of the last block;
    ``params`` are every trainable parameter of ``layers`` (inputs, so autograd returns their
    gradients). The backward walks the blocks from the last: rebuild the block's input, evaluate
    ``f`` on it with gradients on, and take one vector-Jacobian product.
    """

    @staticmethod
    def forward(ctx, gamma, layers, pose, logit, *params):
        device = pose.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        ctx.gamma, ctx.layers, ctx.n_params = gamma, layers, len(params)
        state, velocity = trajectory(layers, (pose, logit), gamma)[-1]  # grad is off in here: nothing kept
        ctx.save_for_backward(*state, *velocity)
        return state

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pose, grad_logit):
        gamma, layers = ctx.gamma, ctx.layers
        pose, logit, v_pose, v_logit = ctx.saved_tensors
        state, velocity = (pose, logit), (v_pose, v_logit)
        grad_state = (_zero_if_none(grad_pose, pose), _zero_if_none(grad_logit, logit))
        grad_velocity = (torch.zeros_like(pose), torch.zeros_like(logit))  # the last velocity is not an output
        param_grads: list[torch.Tensor | None] = []
        enabled, dtype, device = ctx.autocast
        for layer in reversed(layers):
            # x[n] = x[n+1] - v[n+1]; then f(x[n]) with gradients on
            inputs = tuple(x.detach().requires_grad_() for x in _previous_state(state, velocity))
            params = [p for p in layer.parameters() if p.requires_grad]
            # total gradient of v[n+1] (it also reaches the loss through x[n+1] = x[n] + v[n+1])
            grad_v = tuple(gv + gx for gv, gx in zip(grad_velocity, grad_state, strict=True))
            # BatchNorm keeps its running statistics in the graph: restore them only once the graph is used
            with frozen_buffers(layer):
                with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                    f = _f(layer.forward, inputs)  # .forward: the layer's telemetry hooks saw this block once
                vjp = torch.autograd.grad(
                    f, (*inputs, *params), grad_outputs=tuple((1 - gamma) * g for g in grad_v), allow_unused=True
                )
            grad_state = tuple(gx + (g if g is not None else 0) for gx, g in zip(grad_state, vjp[:2], strict=True))
            grad_velocity = tuple(gamma * g for g in grad_v)
            param_grads = [*vjp[2:], *param_grads]
            velocity = _previous_velocity(velocity, tuple(fx.detach() for fx in f), gamma)
            state = tuple(x.detach() for x in inputs)
        # the first velocity is the constant 0: the first state's gradient is all there is
        return (None, None, *grad_state, *_align(param_grads, ctx.n_params))


def _previous_state(state: State, velocity: State) -> State:
    return tuple(x - v for x, v in zip(state, velocity, strict=True))


def _previous_velocity(velocity: State, f: State, gamma: float) -> State:
    return tuple((v - (1 - gamma) * fx) / gamma for v, fx in zip(velocity, f, strict=True))


def _f(call, state: State) -> State:
    """A block's function: the layer's routed pose, and the pull of the logit towards its routed activation."""
    pose, logit = state
    out = call(Capsules(pose, torch.sigmoid(logit)))
    return out.pose.to(pose.dtype), _logit(out.activation.to(logit.dtype)) - logit


def _logit(activation: torch.Tensor) -> torch.Tensor:
    return torch.logit(activation.clamp(EPS, 1 - EPS))


def _zero_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _align(grads: list[torch.Tensor | None], expected: int) -> list[torch.Tensor | None]:
    if len(grads) != expected:  # parameters changed requires_grad between forward and backward
        raise RuntimeError(f"momentum stack: {expected} parameters in the forward, {len(grads)} in the backward")
    return grads


def _refuse_stochastic(layers: Sequence[nn.Module]) -> None:
    for layer in layers:
        for name, module in layer.named_modules():
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
                where = f"{getattr(layer, 'name', type(layer).__name__)}.{name}".rstrip(".")
                raise ValueError(f"momentum residual blocks must be deterministic to be recomputed; {where} is dropout")


__all__ = ["EPS", "MomentumStack", "momentum_stack", "rebuild", "trajectory"]

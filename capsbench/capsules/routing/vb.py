"""Variational Bayes routing (De Sousa Ribeiro, Leontidis and Kollias 2020).

Parents at one output position are the components of a Gaussian mixture with a
Dirichlet prior on the mixing weights and a Normal-Wishart prior on the means and
(diagonal) precisions: ``alpha0 = 1``, ``m0 = 0``, ``kappa0 = 1``, ``Psi0 = I``,
``nu0 = D + 1``. ``R`` starts uniform; each of the ``iterations`` rounds updates
``q(pi, mu, Lambda)`` from the activation-weighted assignments, then (except the last)
``q(z)``. With ``R'_ij = R_ij a_i``, ``N_j = sum_i R'_ij``,
``xbar_j = sum_i R'_ij v_ij / N_j`` and ``S_j = sum_i R'_ij (v_ij - xbar_j)^2``::

    alpha_j = alpha0 + N_j        kappa_j = kappa0 + N_j        nu_j = nu0 + N_j
    m_j     = (kappa0 m0 + N_j xbar_j) / kappa_j
    W_j^-1  = Psi0^-1 + S_j + kappa0 N_j / kappa_j (xbar_j - m0)^2              (diagonal)

    E[ln pi_j]      = digamma(alpha_j) - digamma(sum_j alpha_j)
    E[ln |Lambda_j|] = sum_d (digamma(nu_j / 2) + ln 2 + ln W_jd)              (diagonal)
    E[quad_ij]      = D / kappa_j + nu_j sum_d W_jd (v_ijd - m_jd)^2
    ln rho_ij       = E[ln pi_j] + E[ln |Lambda_j|] / 2 - D/2 ln(2 pi) - E[quad_ij] / 2
    R_ij            = rho_ij normalised over the declared axis (log-sum-exp)

Output, after the last update::

    H_j   = D/2 ln(2 pi e) - E[ln |Lambda_j|] / 2          # entropy of q(mu_j, Lambda_j)
    a_j   = sigmoid(BN(beta_a_j - (exp(E[ln pi_j]) H_j + beta_u_j)))
    pose_j = BN(m_j)

Both BatchNorms are non-affine, per parent type (statistics over batch, positions and,
for poses, pose entries), with running statistics for evaluation: the reference's.
Options switch them off: ``activation_bn=False`` (the per-type BN on activation logits
re-centres every type on every batch, so it can hide dead capsules) and
``pose_bn=False``. Because the pose BN lives here, ``pose_norm`` (the layer-level one)
is False.

Control: ``coefficients="uniform"`` keeps ``R`` at its initial uniform value (one update of
``q(pi, mu, Lambda)``, the same outputs, priors, BatchNorms and loss; no routing), the like-for-like
"routing that does nothing" arm (Paik, Kwak and Kim 2019). With ``diagnostics`` on,
``last_terms`` holds per-type means of ``beta_a``, ``beta_u``, ``entropy`` (``H_j``), ``weight``
(``exp E[ln pi_j]``), ``mass`` (``N_j``), ``cost`` (``weight * H + beta_u``), ``logit`` (before
the activation BN) and ``logit_bn`` (after it).

Choices:

- ``normalise="receiving_parents"`` (default, the reference): ``R`` sums to 1 over every
  parent in every window that receives the child (``geometry.child_sum``);
  ``normalise="parents"``: over the parent types at one position.
- ``R`` starts uniform over that axis: ``1/J`` at one position, or ``1/(J * windows)``
  over receiving parents. The reference starts at ``1/J`` whatever the overlap, so its
  first update sees each child up to K*K times (9 for 3x3, stride 1) and later ones once;
  here every update sees one unit of mass per child, and the returned coefficients are
  normalised even with ``iterations=1``.
- ``log_det="diagonal"`` (default): ``E[ln |Lambda|]`` for a diagonal precision, a product
  of Gamma distributions (``digamma(nu/2)`` in every dimension). ``log_det="wishart"``
  uses the full-Wishart ``sum_{d=0}^{D-1} digamma((nu - d)/2)`` that the reference code
  keeps for its diagonal covariance.
- The reference E-step exponentiates without a shift and divides by a clamped sum; here
  it is a log-sum-exp, and a parent with no mass gives the prior (no division by 0).
  That prior sits at ``m0`` with precision ``psi0`` whatever the scale of the votes: at
  pose scale 1e6 its logits are ~1e14 nats below the others, which the receiving-parents
  log-sum-exp (``ops.child_log_softmax``) handles over the whole fp32 range.
- Coordinate addition in the class capsules (``ClassCaps``, ``model.coord_add``): the
  reference adds a constant 0.1 to pose entries 3 and 7 of every vote at every position
  (its class-capsule code reads the kernel size where the position was meant), so its
  class capsules see no position at all. That is a bug, not a design choice: capsbench
  adds the centre of each position, ``((row + 0.5) / H, (col + 0.5) / W)``, to the same
  entries (``coord_add: hinton``, the default and the VB preset). Against the constant
  offset, everything else equal, the class activations of the paper-mini VB network at
  initialisation move by 0.09 on average and up to 0.57 (128 MNIST test images, batch
  statistics), so class-layer numbers are not comparable with the reference's.

Fused path (``forward_lazy``, ``model.routing_impl=fused``): the votes of the layer are never
stored. On the CPU with 4x4 poses a compiled kernel (``routing/native/vb_window.c``, built at first
use with the system compiler; ``native/cpu_vb.py``) runs one pass over the windows per iteration:
it recomputes each window's votes from the child poses and weights, runs the M-step and E-step in
cache and writes ``ln rho``; the normalisation between passes (either axis) is the reference's
``Normaliser``, and each pass's hand-written backward recomputes its windows. Every option is
covered. Elsewhere (no compiler, other pose sizes, CUDA) every contraction over children recomputes
the votes a block of windows at a time (``fused.LazyCentredVotes``). ``auto`` takes the kernel on
the CPU (``fused.MEASURED_FASTER``: 2.3-2.7x faster per training step by CPU time, 0.57-0.65x the
memory, ``benchmarks/results/fused-cpu2-1thread-vb-isa.md``).

Statistics run in float32 (float64 stays float64) with autocast off; outputs come back
in the input dtype. After every forward ``last_posterior`` holds the detached posterior
parameters (``alpha``, ``kappa``, ``nu`` ``[N, L, J]``; ``m``, ``W`` ``[N, L, J, D]``).

Example::

    >>> import torch
    >>> r = VBRouting(children=9, parents=4, pose_dim=16)
    >>> out = r(torch.randn(2, 5, 9, 4, 16), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 16))
    >>> out.pose.shape, out.activation.shape, out.coefficients.shape
    (torch.Size([2, 5, 4, 16]), torch.Size([2, 5, 4]), torch.Size([2, 5, 9, 4]))
    >>> bool((r.last_posterior["nu"] >= 17).all())
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from capsbench.capsules.routing import declared_options, fused
from capsbench.capsules.routing.base import (
    IDENTITY_GEOMETRY,
    Geometry,
    Routing,
    RoutingOutput,
    type_means,
)
from capsbench.capsules.routing.native import cpu_vb
from capsbench.capsules.routing.ops import (
    EPS,
    LOG_2PI,
    Normaliser,
    check_inputs,
    compute_dtype,
    is_number,
    moments,
    prepare_votes,
    require,
    resolve_options,
    squared_distance,
)
from capsbench.capsules.routing.votes import LazyVotes


class NonAffineBatchNorm(nn.Module):
    """BatchNorm without scale and shift over every dim but ``channel_dim``, in the input's dtype.

    Not ``nn.BatchNorm``: this one runs in the routing's compute dtype (fp32 under AMP,
    fp64 in gradcheck) with fp32 running statistics, and accepts a single value per
    channel (it normalises it to 0 instead of raising).
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        if self.training:
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            count = x.numel() // max(x.shape[channel_dim], 1)
            with torch.no_grad():
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)


class VBRouting(Routing):
    """Variational Bayes routing; see the module docstring for the updates and the options.

    Options: ``alpha0`` (1), ``kappa0`` (1), ``nu0`` (None = D + 1), ``psi0`` (1: Psi0 = psi0 * I),
    ``m0`` (0), ``normalise`` ("receiving_parents"), ``activation_bn`` (True), ``pose_bn``
    (True), ``log_det`` ("diagonal" or "wishart"), ``bn_momentum`` (0.1), ``coefficients``
    ("routed" or the "uniform" control).
    """

    loss = "cross_entropy"
    # the reference initialises capsule weights Xavier-uniform (std about 0.02); 1/sqrt(fan_in)
    # learns far slower (41% vs 95% test accuracy on digits after 3 epochs)
    weight_std = 0.02
    pose_norm = False  # the reference's pose BN is inside the routing (option pose_bn)
    normalised_over = "receiving_parents"
    vote_transform = "matrix"
    class_caps = "shared"  # VB reference: shared class-capsule weights with coordinate addition
    primary_activation = "sigmoid"

    OPTIONS = declared_options.VB

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 3,
        in_pose_dim: int | None = None,
        **options: Any,
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        opts = resolve_options("vb", options, self.OPTIONS)
        if opts["nu0"] is None:
            opts["nu0"] = pose_dim + 1
        require(
            isinstance(iterations, int) and iterations >= 1,
            "vb",
            "iterations",
            "an integer >= 1",
            iterations,
            "model.iterations",
        )
        # the one bound that depends on another value (pose_dim), so no declaration can state it
        least_nu = pose_dim - 1 if opts["log_det"] == "wishart" else 0
        require(is_number(opts["nu0"], least_nu), "vb", "nu0", f"a number > {least_nu}", opts["nu0"])
        momentum = opts["bn_momentum"]
        self.coefficients = opts["coefficients"]
        self.alpha0, self.kappa0 = float(opts["alpha0"]), float(opts["kappa0"])
        self.nu0, self.psi0, self.m0 = float(opts["nu0"]), float(opts["psi0"]), float(opts["m0"])
        self.log_det = opts["log_det"]
        self.normalised_over = opts["normalise"]  # instance attribute shadows the class default
        self.beta_u = nn.Parameter(torch.zeros(parents))
        self.beta_a = nn.Parameter(torch.zeros(parents))
        momentum = float(momentum)
        self.activation_bn = NonAffineBatchNorm(parents, momentum) if opts["activation_bn"] else None
        self.pose_bn = NonAffineBatchNorm(parents, momentum) if opts["pose_bn"] else None
        self.last_posterior: dict[str, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"parents={self.parents}, pose_dim={self.pose_dim}, iterations={self.iterations}, "
            f"alpha0={self.alpha0}, kappa0={self.kappa0}, nu0={self.nu0}, psi0={self.psi0}, m0={self.m0}, "
            f"normalise={self.normalised_over!r}, log_det={self.log_det!r}"
        )

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor | None = None,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        check_inputs(votes, activation, self.parents, self.pose_dim)
        out_dtype, dtype = votes.dtype, compute_dtype(votes.dtype)
        with torch.autocast(device_type=votes.device.type, enabled=False):
            v, a = votes.to(dtype), activation.to(dtype)
            x, centre = prepare_votes(v, a)
            new_pose, new_act, r = self._route(x, centre, a, geometry, dtype)
        return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), r.transpose(2, 3).to(out_dtype))

    def fused_faster(self, device: torch.device) -> bool:
        kind = torch.device(device).type
        if kind == "cpu":  # measured for the compiled kernel: faster only where it serves this configuration
            return fused.measured_faster("vb", "cpu") and self._cpu_kernel_covers() and cpu_vb.available()
        return fused.measured_faster("vb", kind)

    def _cpu_kernel_covers(self) -> bool:
        """The compiled CPU kernel (``routing/native/vb_window.c``) takes every VB option; it needs 4x4 poses."""
        return self.pose_dim == 16 and self.in_pose_dim == 16

    def forward_lazy(
        self, votes: LazyVotes, activation: torch.Tensor, geometry: Geometry, need_coefficients: bool = True
    ) -> RoutingOutput:
        """The same routing on lazily given votes; the votes of the layer are never stored.

        On the CPU with 4x4 matrix votes, the compiled kernel (``native/cpu_vb.py``) runs one pass over
        the windows per iteration, recomputing each window's votes. Elsewhere every contraction over
        children recomputes the votes a block of windows at a time (``fused.LazyCentredVotes``). Either
        way only the coefficients ``[N, L, J, I]`` cross windows. Coefficients come back detached.
        """
        out_dtype, dtype = votes.pose.dtype, compute_dtype(votes.pose.dtype)
        with torch.autocast(device_type=votes.pose.device.type, enabled=False):
            a = activation.to(dtype)
            if self._cpu_kernel_covers() and cpu_vb.usable(votes, dtype):
                prior = (self.alpha0, self.kappa0, self.nu0, self.psi0, self.m0)
                windows = cpu_vb.Windows(votes, a, dtype, prior, wishart=self.log_det == "wishart")
                self.last_backend = cpu_vb.backend(dtype)  # c-sse2, c-avx2, c-avx512: records say which ran
                new_pose, new_act, r = self._iterate(windows.log_rho, self._compiled_posterior(windows), a, geometry,
                                                     dtype)  # fmt: skip
            else:
                x = fused.LazyCentredVotes(votes, a, dtype)
                new_pose, new_act, r = self._route(x, x.centre, a, geometry, dtype)
        coefficients = r.detach().transpose(2, 3).to(out_dtype) if need_coefficients else None
        return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), coefficients)

    def _compiled_posterior(self, windows):
        """The kernel's last pass as ``r -> (post, centre)``; alpha, kappa and nu are each a prior plus the mass."""

        def posterior(r):
            mass, mean, prec, centre = windows.posterior(r)
            kappa = self.kappa0 + mass
            return {"alpha": self.alpha0 + mass, "kappa": kappa, "nu": self.nu0 + mass, "m": mean, "W": prec}, centre

        return posterior

    def _route(self, x, centre, a, geometry, dtype):
        """All updates from the centred votes ``x`` (a tensor or lazy): pose, activation, ``R [N, L, J, I]``."""
        m0 = self.m0 - centre  # the prior mean, in the centred coordinates of x
        a_child = a.unsqueeze(2)
        return self._iterate(
            lambda r: self._log_rho(self._update_parameters(r * a_child, x, m0), x),
            lambda r: (self._update_parameters(r * a_child, x, m0), centre),
            a, geometry, dtype,
        )  # fmt: skip

    def _iterate(self, log_rho, posterior, a, geometry, dtype):
        """The rounds of updates: ``log_rho(R)`` is an M-step then ``ln rho``, ``posterior(R)`` the last M-step
        (``-> post, centre``). Returns pose, activation and the last ``R [N, L, J, I]``."""
        norm = Normaliser(self.normalised_over, geometry, a)
        r = norm.initial(self.parents, a)  # [N, L, J, I]
        rounds = self.iterations if self.coefficients == "routed" else 1  # uniform: R never changes
        for _ in range(rounds - 1):
            r = norm(log_rho(r))
        post, centre = posterior(r)
        new_act, new_pose = self._outputs(post, centre, dtype)
        self.last_posterior = {k: val.detach() for k, val in post.items()} | {"m": (post["m"] + centre).detach()}
        return new_pose, new_act, r

    def _update_parameters(self, weights, x, m0):
        """q(pi, mu, Lambda) from the activation-weighted assignments ``weights`` ``[N, L, J, I]``."""
        mass, s1, s2 = moments(weights, x)
        n_j = mass.unsqueeze(-1)
        xbar = s1 / (n_j + EPS)
        scatter = (s2 - s1 * xbar).clamp_min(0)  # sum_i R' (v - xbar)^2
        kappa = self.kappa0 + mass
        shrink = self.kappa0 * mass / kappa  # kappa0 N / kappa: 0 for a parent with no mass
        inv_w = 1.0 / self.psi0 + scatter + shrink.unsqueeze(-1) * (xbar - m0).square()
        return {
            "alpha": self.alpha0 + mass,
            "kappa": kappa,
            "nu": self.nu0 + mass,
            "m": (self.kappa0 * m0 + s1) / kappa.unsqueeze(-1),
            "W": 1.0 / inv_w,
        }

    def _expected_log_det(self, nu, w):
        d = self.pose_dim
        if self.log_det == "wishart":
            offsets = torch.arange(d, dtype=nu.dtype, device=nu.device)
            digammas = torch.digamma(0.5 * (nu.unsqueeze(-1) - offsets)).sum(-1)
        else:
            digammas = d * torch.digamma(0.5 * nu)
        return digammas + d * math.log(2.0) + torch.log(w).sum(-1)

    @staticmethod
    def _expected_log_pi(alpha):
        return torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))

    def _log_rho(self, post, x):
        """``ln rho_ij`` ``[N, L, J, I]``: the unnormalised log responsibilities."""
        d = self.pose_dim
        per_parent = (
            self._expected_log_pi(post["alpha"])
            + 0.5 * self._expected_log_det(post["nu"], post["W"])
            - 0.5 * d * LOG_2PI
            - 0.5 * d / post["kappa"]
        )
        quad = post["nu"].unsqueeze(-1) * squared_distance(x, post["W"], post["m"])
        return per_parent.unsqueeze(-1) - 0.5 * quad

    def _outputs(self, post, centre, dtype):
        d = self.pose_dim
        entropy = 0.5 * d * math.log(2 * math.pi * math.e) - 0.5 * self._expected_log_det(post["nu"], post["W"])
        weight = torch.exp(self._expected_log_pi(post["alpha"]))  # E[ln pi_j] made a weight in (0, 1)
        cost = weight * entropy + self.beta_u.to(dtype)
        logit = self.beta_a.to(dtype) - cost
        raw = logit
        if self.activation_bn is not None:
            logit = self.activation_bn(logit, channel_dim=2)  # [N, L, J]: J channels
        if self.diagnostics:
            self.last_terms = type_means(
                beta_a=self.beta_a, beta_u=self.beta_u, entropy=entropy, weight=weight,
                mass=post["alpha"] - self.alpha0, cost=cost, logit=raw, logit_bn=logit,
            )  # fmt: skip
        new_pose = post["m"] + centre
        if self.pose_bn is not None:
            new_pose = self.pose_bn(new_pose, channel_dim=2)  # [N, L, J, D]: J channels
        return torch.sigmoid(logit), new_pose

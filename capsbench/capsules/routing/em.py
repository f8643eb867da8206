"""EM routing (Hinton, Sabour and Frosst 2018, "Matrix capsules with EM routing").

Each parent type ``j`` at one output position is a Gaussian cluster with a diagonal
covariance; children are the data points, weighted by their activation. With ``R``
the routing coefficients, ``a_i`` the child activations and ``v_ij`` the votes:

M-step (iteration ``t``)::

    R'_ij    = R_ij * a_i                          # activations weight every statistic
    r_j      = sum_i R'_ij                         # mass of parent j
    mu_j     = sum_i R'_ij v_ij / r_j
    sigma2_j = max(sum_i R'_ij (v_ij - mu_j)^2 / r_j, 0) + min_var      # variance floor
    cost_j   = sum_h (beta_u_j + ln sigma_jh) * scale(r_j)
    a_j      = sigmoid(lambda_t * (beta_a_j - cost_j))
    lambda_t = final_lambda * (1 - 0.95 ** (t + 1))                       # OpenReview schedule

E-step (between M-steps), in log space::

    ln p_ij = ln a_j - 1/2 sum_h ln(2 pi sigma2_jh) - 1/2 sum_h (v_ijh - mu_jh)^2 / sigma2_jh
    R_ij    = exp(ln p_ij - logsumexp over the normalisation axis)

``R`` starts uniform over the normalisation axis (``1/J`` over parent types, or
``1/(J * windows holding the child)`` over receiving parents).

Choices (each an option, documented because references differ):

- ``cost="sum"`` (default): ``scale(r_j) = r_j``, exactly Hinton's formula as SR-CapsNet
  (the implementation the paper's depth protocol follows) computes it, with its
  ``final_lambda=1e-2``. With the schedule the temperature at the last of 3 iterations is
  ``0.0014``, so a 3x3x16 window (144 children, mean activation 0.5, votes of spread 0.2)
  gives ``|lambda * cost| ~ 0.2``: parent activations start at 0.52-0.62 (measured with
  SR-CapsNet's weight initialisation), far from saturation.
  Raw ``r_j`` grows with the window size, so ``cost="mean"`` divides it by the number of
  children ``I`` (a mass fraction in [0, 1]); its default ``final_lambda`` is 1.44
  (= 1e-2 * 144), which gives the same activations as "sum" on a 3x3x16 window and the
  same scale on every window size. ``cost="standardise"`` is the Google/IBM
  normalisation ``a_j = sigmoid(lambda_t (beta_a_j + (mean_J(cost) - cost_j) / std_J(cost)))``
  with their ``final_lambda=1e-2``: at initialisation it gives 0.5 +- 0.001 everywhere
  (raise ``final_lambda`` to ~7 to reach ``lambda ~ 1`` at the last of 3 iterations). A raw
  ``r_j`` with ``final_lambda ~ 1`` (some ports) saturates every activation at 1.
- ``normalise="parents"`` (default; SR-CapsNet, yl-1993): ``R`` sums to 1 over the ``J``
  parent types at one position. ``normalise="receiving_parents"`` (Google, IBM, VB):
  ``R`` sums to 1 over every parent in every window that receives the child, through
  ``geometry.child_sum``.
- Variants and controls (options; the defaults above are capsbench's, hash-neutral):

  - ``coefficients="uniform"``: a control arm (Paik, Kwak and Kim 2019, arXiv 1907.13327).
    ``R`` stays at its initial uniform value and only the last M-step runs (with the last
    ``lambda_t``): same votes, statistics, activation rule and loss, no routing.
  - ``renormalise=True``: yl-1993's M-step, ``R'_ij = R_ij a_i / (sum_j R_ij a_i + eps)``,
    which cancels ``a_i`` (see the deviation below); the reference's bug, kept as an option.
  - ``initial_coefficients="one"``: SR-CapsNet's ``EmRouting2d`` first M-step with ``R = 1``
    (every parent's first mass ``J`` times larger); later E-steps normalise as usual.
  - ``lambda_schedule="fixed"``: ``lambda_t = final_lambda`` at every iteration (yl-1993 fixes
    ``lambda = 1e-3``: ``final_lambda=1e-3, lambda_schedule=fixed``); default ``"openreview"``.

- Deviations from the references, all deliberate: activations weight the statistics and
  ``R'`` is NOT renormalised over parents (yl-1993 does, which cancels ``a_i``; here a
  child with ``a_i = 0`` has no influence at all); ``R`` starts at ``1/J`` (SR-CapsNet
  starts at 1, which makes the first ``r_j`` J times larger); the E-step uses
  ``ln a_j = logsigmoid(...)`` and a log-sum-exp, never ``log(0)``; the variance has a
  floor (Google's ``min_var = 5e-4``, added rather than max-ed so the gradient never
  stops), so identical votes give no NaN.

Fused path (``forward_lazy``, ``model.routing_impl=fused``): with ``normalise="parents"``
windows are independent, so each block of windows runs every iteration on its own votes,
computed from the child poses and weights (``routing/fused.py``), and the backward
recomputes each block; with ``"receiving_parents"`` every contraction over children is
one pass over the blocks (``fused.LazyCentredVotes``). Either way the layer's votes are
never stored (about a third of the reference's peak memory) and the iterations are the
same code as ``forward``'s. On the CPU, with matrix votes over parent types and cost "sum"
or "mean" (any variant or control above), a compiled per-window C kernel (``routing/native``:
built at first use with the system compiler, vectorised across parent types, forward and backward
written out by hand; the backward recomputes the votes from the coefficients and statistics the
forward keeps per window) serves the fused path instead, coefficients included; without a
compiler, or for other options, the
blockwise PyTorch path runs. ``auto`` takes the fused path on the CPU only where that kernel
serves it and ``fused.MEASURED_FASTER`` says it was measured faster
(``benchmarks/results/fused-*.md``). On CUDA the Triton kernel
(``routing/kernels/triton_em.py``, when present) serves calls that need no coefficients.

All statistics run in float32 (float64 stays float64) with autocast off; outputs come
back in the input dtype. The votes are read in batched matrix products
(``prepare_votes``, ``moments``, ``squared_distance`` in ``routing/ops.py``, shared with VB routing).

Example::

    >>> import torch
    >>> r = EMRouting(children=9, parents=4, pose_dim=16)
    >>> out = r(torch.randn(2, 5, 9, 4, 16), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 16))
    >>> out.pose.shape, out.activation.shape, out.coefficients.shape
    (torch.Size([2, 5, 4, 16]), torch.Size([2, 5, 4]), torch.Size([2, 5, 9, 4]))
    >>> bool(torch.allclose(out.coefficients.sum(-1), torch.ones(2, 5, 9)))
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from capsbench.capsules.routing import declared_options, fused
from capsbench.capsules.routing.base import (
    IDENTITY_GEOMETRY,
    Geometry,
    Routing,
    RoutingOutput,
    type_means,
)
from capsbench.capsules.routing.native import cpu_em
from capsbench.capsules.routing.ops import (  # noqa: F401  (child_log_softmax: kept importable from here)
    EPS,
    LOG_2PI,
    Normaliser,
    check_inputs,
    child_log_softmax,
    compute_dtype,
    moments,
    prepare_votes,
    require,
    resolve_options,
    squared_distance,
)
from capsbench.capsules.routing.votes import LazyVotes


def inverse_temperatures(final_lambda: float, iterations: int) -> list[float]:
    """The OpenReview schedule ``lambda_t = final_lambda * (1 - 0.95 ** (t + 1))``, t = 0..iterations-1.

    >>> [round(x, 6) for x in inverse_temperatures(1e-2, 3)]
    [0.0005, 0.000975, 0.001426]
    """
    return [final_lambda * (1.0 - 0.95 ** (t + 1)) for t in range(iterations)]


# ---------------------------------------------------------------------------------------------


def last_m_step_terms(beta_a, lam, logit, mass, cost) -> dict[str, torch.Tensor]:
    """``last_terms`` from the last M-step's ``[N, L, J]`` logit, mass and cost: one definition for the reference
    path, the compiled kernel's output and the blockwise recomputation."""
    return type_means(beta_a=beta_a, lambda_t=lam, margin=logit / lam, logit=logit, mass=mass, cost=cost)


class EMRouting(Routing):
    """EM routing; see the module docstring for the formulas and the options.

    Options: ``final_lambda`` (None: 1e-2 for cost "sum" and "standardise", 1.44 for
    "mean"), ``min_var`` (5e-4), ``normalise`` ("parents" or "receiving_parents"),
    ``cost`` ("sum", "mean" or "standardise"), and the variants and control
    ``coefficients`` ("routed"/"uniform"), ``renormalise`` (False), ``initial_coefficients``
    ("uniform"/"one"), ``lambda_schedule`` ("openreview"/"fixed").
    With ``diagnostics`` on, ``last_terms`` holds per-type means of ``beta_a``, ``cost``,
    ``mass``, ``margin = logit / lambda_t`` (``beta_a - cost``; with cost "standardise" the
    standardised margin), ``logit`` and ``lambda_t``, all at the last iteration.
    """

    loss = "spread"
    # vote weight init: a capsbench choice (the references differ: yl-1993 std 1, Google 0.3 conv /
    # 0.01 class); measured 95% vs 84% test accuracy with 1/sqrt(fan_in) on digits after 3 epochs
    weight_std = 0.05
    pose_norm = True  # SR-CapsNet puts a BatchNorm on the poses after every stacked EM layer
    normalised_over = "parents"
    vote_transform = "matrix"
    class_caps = "shared"  # Hinton et al., Google, yl-1993: shared weights + coordinate addition
    primary_activation = "sigmoid"

    OPTIONS = declared_options.EM
    FINAL_LAMBDA = {"sum": 1e-2, "mean": 1.44, "standardise": 1e-2}  # final_lambda=None picks by cost

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
        opts = resolve_options("em", options, self.OPTIONS)
        require(
            isinstance(iterations, int) and iterations >= 1,
            "em",
            "iterations",
            "an integer >= 1",
            iterations,
            "model.iterations",
        )
        if opts["final_lambda"] is None:
            opts["final_lambda"] = self.FINAL_LAMBDA[opts["cost"]]
        self.coefficients, self.renormalise = opts["coefficients"], opts["renormalise"]
        self.initial_coefficients = opts["initial_coefficients"]
        schedule = opts["lambda_schedule"]
        self.final_lambda = float(opts["final_lambda"])
        self.min_var = float(opts["min_var"])
        self.cost = opts["cost"]
        self.normalised_over = opts["normalise"]  # instance attribute shadows the class default
        self.lambdas = (
            inverse_temperatures(self.final_lambda, iterations)
            if schedule == "openreview"
            else [self.final_lambda] * iterations
        )
        self.beta_u = nn.Parameter(torch.zeros(parents))
        self.beta_a = nn.Parameter(torch.zeros(parents))

    def extra_repr(self) -> str:
        return (
            f"parents={self.parents}, pose_dim={self.pose_dim}, iterations={self.iterations}, "
            f"final_lambda={self.final_lambda}, min_var={self.min_var}, cost={self.cost!r}, "
            f"normalise={self.normalised_over!r}, coefficients={self.coefficients!r}, "
            f"renormalise={self.renormalise}, initial_coefficients={self.initial_coefficients!r}, "
            f"lambdas={[round(x, 6) for x in self.lambdas]}"
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
            beta_u, beta_a = self.beta_u.to(dtype), self.beta_a.to(dtype)
            new_pose, new_act, r = self.route(votes.to(dtype), activation.to(dtype), beta_u, beta_a, geometry)
        return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), r.transpose(2, 3).to(out_dtype))

    def route(self, v, a, beta_u, beta_a, geometry=IDENTITY_GEOMETRY):
        """All iterations on votes ``v [N, L, I, J, D]`` (compute dtype): pose, activation, ``R [N, L, J, I]``."""
        x, centre = prepare_votes(v, a)
        return self._iterate(x, centre, a, beta_u, beta_a, geometry)

    def _iterate(self, x, centre, a, beta_u, beta_a, geometry):
        """The iterations from the centred votes ``x`` (a tensor, or lazy: ``fused.LazyCentredVotes``)."""
        norm = Normaliser(self.normalised_over, geometry, a)
        r = norm.initial(self.parents, a)  # [N, L, J, I]
        a_child = a.unsqueeze(2)  # [N, L, 1, I]
        lambdas = self.lambdas if self.coefficients == "routed" else self.lambdas[-1:]  # uniform: last M-step
        for t, lam in enumerate(lambdas):
            first_r = t == 0 and self.initial_coefficients == "one"
            mean, var, logit, terms = self._m_step(
                self._weights(torch.ones_like(r) if first_r else r, a_child), x, beta_u, beta_a, lam
            )
            if t < len(lambdas) - 1:
                r = norm(self._log_likelihood(x, mean, var) + F.logsigmoid(logit).unsqueeze(-1))
        # the reference path sets the layer's terms here; the blockwise path runs this per block, then replaces them
        if self.diagnostics:
            self.last_terms = last_m_step_terms(beta_a, lam, logit, terms["mass"], terms["cost"])
        return mean + centre, torch.sigmoid(logit), r

    def _weights(self, r, a_child):
        """``R'_ij = R_ij a_i`` (capsbench), or renormalised over parents (yl-1993's ``renormalise``)."""
        weights = r * a_child
        if self.renormalise:
            weights = weights / (weights.sum(2, keepdim=True) + EPS)
        return weights

    # ----------------------------------------------------------------------------- fused path

    def options_are_default(self) -> bool:
        """No control or reference variant is on (what the compiled kernels implement)."""
        return (self.coefficients, self.renormalise, self.initial_coefficients, self.lambdas) == (
            "routed",
            False,
            "uniform",
            inverse_temperatures(self.final_lambda, self.iterations),
        )

    def fused_faster(self, device: torch.device) -> bool:
        kind = torch.device(device).type
        if kind == "cpu":  # measured for the compiled kernel: faster only where it serves this configuration
            return fused.measured_faster("em", "cpu") and self._cpu_kernel_covers() and cpu_em.available()
        return fused.measured_faster("em", kind)

    def _cpu_kernel_covers(self) -> bool:
        """Options the compiled CPU kernel implements (``routing/native``): EM over parent types, cost sum or
        mean, any lambda schedule (it takes the lambdas), and every variant and control: ``renormalise`` and
        ``initial_coefficients`` are its flags, ``coefficients="uniform"`` is one M-step (``_kernel_lambdas``)."""
        return self.normalised_over == "parents" and self.cost in cpu_em.COSTS

    def _kernel_lambdas(self) -> list[float]:
        """The lambdas of the M-steps that run: all, or for the uniform control only the last (as ``_iterate``)."""
        return self.lambdas if self.coefficients == "routed" else self.lambdas[-1:]

    def _kernel_variant(self) -> int:
        """The compiled kernel's variant flags for this layer's options."""
        renormalise = cpu_em.RENORMALISE if self.renormalise else 0
        return renormalise | (cpu_em.INITIAL_ONE if self.initial_coefficients == "one" else 0)

    def _cpu_kernel(self, votes: LazyVotes, activation, beta_u, beta_a, dtype, need_coefficients, need_terms=False):
        """Pose, activation, coefficients and (``need_terms``) ``last_terms`` from the compiled CPU kernel, or None
        where it does not apply."""
        if votes.pose.device.type != "cpu" or votes.transform != "matrix" or not self._cpu_kernel_covers():
            return None
        n, length, i, j, d = votes.shape
        pose = votes.pose.to(dtype).reshape(n * length, i, -1)
        weight = votes.per_child_weight().to(dtype)
        offsets = votes.offsets.to(dtype) if votes.offsets is not None else None
        if not cpu_em.usable(pose, weight, offsets):
            return None
        terms = pose.new_empty(n * length, 3, j) if need_terms else None  # the last M-step's mass, cost, logit
        new_pose, new_act, r = cpu_em.em_routing_cpu(
            pose, activation.to(dtype).reshape(n * length, i), weight, beta_u, beta_a, offsets,
            lambdas=self._kernel_lambdas(), min_var=self.min_var, cost=self.cost, need_coefficients=need_coefficients,
            variant=self._kernel_variant(), terms=terms,
        )  # fmt: skip
        r = r.view(n, length, j, i) if r is not None else None
        if terms is not None:
            mass, cost, logit = terms.view(n, length, 3, j).unbind(2)
            lam = self._kernel_lambdas()[-1]
            terms = last_m_step_terms(beta_a, lam, logit, mass, cost)
        return new_pose.view(n, length, j, d), new_act.view(n, length, j), r, terms

    def _gpu_kernel(self, votes: LazyVotes, need_coefficients: bool):
        """The Triton EM kernel when it applies (CUDA, matrix votes, per-child weights, no offsets, no
        coefficients asked for: it returns none), else None (the blockwise path runs)."""
        plain = votes.transform == "matrix" and votes.weight_index is None and votes.offsets is None
        plain = plain and self.options_are_default()  # the kernel implements capsbench's EM, no variant
        if votes.pose.device.type != "cuda" or need_coefficients or not plain:
            return None
        try:
            from capsbench.capsules.routing.kernels import triton_em
        except ImportError:  # no kernels package or no Triton: the blockwise path
            return None
        return triton_em.em_routing_triton if triton_em.available(votes.pose.device) else None

    def forward_lazy(
        self, votes: LazyVotes, activation: torch.Tensor, geometry: Geometry, need_coefficients: bool = True
    ) -> RoutingOutput:
        """The routing of lazily given votes, a block of windows at a time (see ``routing/fused.py``).

        Windows are independent when ``R`` is normalised over parent types, so each block runs
        every iteration on its own votes, computed from the child poses and weights; the
        backward recomputes each block instead of storing its votes. Coefficients come back
        detached (None unless ``need_coefficients``).
        """
        # With telemetry on (validation epochs), coupled windows need the reference path for the terms.
        # Independent windows keep the fast path: the kernel writes the terms too, 2.3-4.3x less CPU per
        # validation batch than the reference path (benchmarks/em_eval_cost.py).
        if self.diagnostics and self.normalised_over != "parents":
            return self.forward(votes.materialize(), activation, votes.pose, geometry)
        out_dtype, dtype = votes.pose.dtype, compute_dtype(votes.pose.dtype)
        with torch.autocast(device_type=votes.pose.device.type, enabled=False):
            beta_u, beta_a = self.beta_u.to(dtype), self.beta_a.to(dtype)
            if self.normalised_over != "parents":  # windows coupled: one pass over the blocks per contraction
                a = activation.to(dtype)
                x = fused.LazyCentredVotes(votes, a, dtype)
                new_pose, new_act, r = self._iterate(x, x.centre, a, beta_u, beta_a, geometry)
                coefficients = r.detach().transpose(2, 3).to(out_dtype) if need_coefficients else None
                return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), coefficients)
            kernel = self._gpu_kernel(votes, need_coefficients or self.diagnostics)  # it returns no terms
            if kernel is not None:
                n, length, i, j, d = votes.shape
                new_pose, new_act = kernel(
                    votes.pose.to(dtype).reshape(n * length, i, d), activation.to(dtype).reshape(n * length, i),
                    votes.weight.to(dtype), beta_u, beta_a, lambdas=tuple(self.lambdas), min_var=self.min_var,
                    cost=self.cost,
                )  # fmt: skip
                pose_out, act_out = new_pose.view(n, length, j, d), new_act.view(n, length, j)
                self.last_backend = "triton"
                return RoutingOutput(pose_out.to(out_dtype), act_out.to(out_dtype), None)

            def window_block(v, a, bu, ba):
                new_pose, new_act, r = self.route(v.unsqueeze(0), a.unsqueeze(0), bu, ba)
                return new_pose[0], new_act[0], r[0]

            compiled = self._cpu_kernel(votes, activation, beta_u, beta_a, dtype, need_coefficients, self.diagnostics)
            self.last_backend = cpu_em.backend(dtype) if compiled else None
            if compiled:
                new_pose, new_act, r, terms = compiled
            else:  # the blockwise path; telemetry's terms need the coefficients of the last M-step
                new_pose, new_act, r = fused.route_in_blocks(
                    window_block, votes, activation.to(dtype), (beta_u, beta_a), dtype,
                    need_coefficients or self.diagnostics,
                )  # fmt: skip
                terms = self._final_terms(votes, activation.to(dtype), r, beta_u, beta_a, dtype)
            if self.diagnostics:
                self.last_terms = terms
        coefficients = r.transpose(-1, -2).to(out_dtype) if need_coefficients else None
        return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), coefficients)

    def _final_terms(self, votes: LazyVotes, activation, r, beta_u, beta_a, dtype) -> dict[str, torch.Tensor]:
        """``last_terms`` of the final M-step (None without diagnostics), recomputed a block of windows at a time.

        The blockwise path returns the outputs and the coefficients ``R [N, L, J, I]`` that entered the last
        M-step; its activation terms are that one M-step again (``_m_step``, the reference's own) on each
        block's votes. Telemetry then keeps the fast path's memory and outputs instead of materialising the
        layer's votes for the reference path (the compiled CPU kernel writes the terms itself: faster still;
        measured in ``benchmarks/em_eval_cost.py``).
        """
        if not self.diagnostics:
            return None
        n, length, i, j, _ = votes.shape
        lambdas = self._kernel_lambdas()
        lam = lambdas[-1]
        if len(lambdas) == 1 and self.initial_coefficients == "one":
            r = torch.ones_like(r)  # that single M-step ran on R = 1; the paths return the normaliser's 1/J

        def terms(v, a, r_block):
            x, _ = prepare_votes(v.unsqueeze(0), a.unsqueeze(0))
            weights = self._weights(r_block.unsqueeze(0), a.unsqueeze(0).unsqueeze(2))
            _, _, logit, parts = self._m_step(weights, x, beta_u, beta_a, lam)
            return logit[0], parts["mass"][0], parts["cost"][0]

        per_window = (activation.reshape(n * length, i), r.reshape(n * length, j, i))
        logit, mass, cost = (t.view(n, length, j) for t in fused.map_windows(terms, votes, dtype, per_window))
        return last_m_step_terms(beta_a, lam, logit, mass, cost)

    def _m_step(self, weights, x, beta_u, beta_a, lam):
        """-> mean, variance, activation logit, and the activation's terms (mass, cost) ``[N, L, J]``."""
        mass, s1, s2 = moments(weights, x)  # by default weights = R * a_i, NOT renormalised over parents
        denom = (mass + EPS).unsqueeze(-1)
        mean = s1 / denom  # relative to the centre
        var = (s2 / denom - mean.square()).clamp_min(0) + self.min_var
        cost = (self.pose_dim * beta_u + 0.5 * torch.log(var).sum(-1)) * mass  # sum_h (beta_u + ln sigma_h) r_j
        if self.cost == "mean":
            cost = cost / x.shape[1]  # the number of children per window
        if self.cost == "standardise":
            centred = cost.mean(-1, keepdim=True) - cost
            std = torch.sqrt(centred.square().mean(-1, keepdim=True) + 1e-12)
            return mean, var, lam * (beta_a + centred / std), {"mass": mass, "cost": cost}
        return mean, var, lam * (beta_a - cost), {"mass": mass, "cost": cost}

    def _log_likelihood(self, x, mean, var):
        """``ln N(v_i | mu_j, sigma_j)`` for every child and parent, ``[N, L, J, I]``."""
        log_norm = -0.5 * (LOG_2PI * self.pose_dim + torch.log(var).sum(-1))
        return log_norm.unsqueeze(-1) - 0.5 * squared_distance(x, 1.0 / var, mean)

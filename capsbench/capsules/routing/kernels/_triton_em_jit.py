"""The Triton programs behind :mod:`capsbench.capsules.routing.kernels.triton_em` (design notes there).

Imported only where Triton is installed. Shapes inside a program: every tensor is 4-D,
``[windows BP, children BI, parents BJ, pose entries 16]``; a per-window statistic keeps
a singleton children axis (``[BP, 1, BJ, 16]``), a per-parent scalar a singleton pose axis
(``[BP, 1, BJ, 1]``), so everything broadcasts without reshapes. ``d = 4 r + c`` indexes
a 4x4 pose matrix row-major, as ``VoteTransform`` does.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

EPS = tl.constexpr(1e-8)  # em.EPS: guards divisions by a parent's mass
LOG_2PI = tl.constexpr(math.log(2 * math.pi))
POSE = tl.constexpr(16)  # 4x4 matrix capsules


# ------------------------------------------------------------------ index and load helpers


@triton.jit
def _axes(BP: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    """Index vectors placed on the four axes (windows relative to the block, children, parents, entries)."""
    p = tl.arange(0, BP)[:, None, None, None]
    i = tl.arange(0, BI)[None, :, None, None]
    j = tl.arange(0, BJ)[None, None, :, None]
    d = tl.arange(0, POSE)[None, None, None, :]
    return p, i, j, d


@triton.jit
def _load_w(w_ptr, i, j, d, I, J, k: tl.constexpr):
    """``W[i, j, k, c]`` laid out on entry ``d = 4 r + c`` (the same for every row r): ``[1, BI, BJ, 16]``."""
    return tl.load(w_ptr + (i * J + j) * POSE + k * 4 + d % 4, mask=(i < I) & (j < J), other=0.0)


@triton.jit
def _load_u(pose_ptr, p, i, d, P, I, k: tl.constexpr):
    """``U[p, i, r, k]`` laid out on entry ``d = 4 r + c`` (the same for every column c): ``[BP, BI, 1, 16]``."""
    return tl.load(pose_ptr + (p * I + i) * POSE + (d // 4) * 4 + k, mask=(p < P) & (i < I), other=0.0)


@triton.jit
def _centred_votes(pose_ptr, w_ptr, centre, p, i, j, d, P, I, J):
    """``x[p, i, j] = U[p, i] @ W[i, j] - centre[p, j]`` (4 multiply-adds per entry), ``[BP, BI, BJ, 16]``."""
    v = _load_u(pose_ptr, p, i, d, P, I, 0) * _load_w(w_ptr, i, j, d, I, J, 0)
    v += _load_u(pose_ptr, p, i, d, P, I, 1) * _load_w(w_ptr, i, j, d, I, J, 1)
    v += _load_u(pose_ptr, p, i, d, P, I, 2) * _load_w(w_ptr, i, j, d, I, J, 2)
    v += _load_u(pose_ptr, p, i, d, P, I, 3) * _load_w(w_ptr, i, j, d, I, J, 3)
    return v - centre


@triton.jit
def _load_act(act_ptr, p, i, P, I):
    """Child activations ``[BP, BI, 1, 1]`` (0 outside the tensor, so padding never counts)."""
    return tl.load(act_ptr + p * I + i, mask=(p < P) & (i < I), other=0.0)


@triton.jit
def _window_ptrs(p, j, d, J, T: tl.constexpr, t: tl.constexpr):
    """Offsets of a per-window statistic of iteration t in a ``[P, T, J, 16]`` tensor."""
    return ((p * T + t) * J + j) * POSE + d


@triton.jit
def _parent_ptrs(p, j, J, T: tl.constexpr, t: tl.constexpr):
    """Offsets of a per-parent scalar of iteration t in a ``[P, T, J]`` tensor."""
    return (p * T + t) * J + j


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


# ------------------------------------------------------------------ EM maths shared by the programs


@triton.jit
def _load_stats(st_mean, st_var, st_mass, st_logit, p, j, d, P, J, min_var, T: tl.constexpr, t: tl.constexpr):
    """Iteration t's M-step results: mean, raw variance, floored variance, mass, logit."""
    ok = (p < P) & (j < J)
    mean = tl.load(st_mean + _window_ptrs(p, j, d, J, T, t), mask=ok, other=0.0)
    var_raw = tl.load(st_var + _window_ptrs(p, j, d, J, T, t), mask=ok, other=0.0)
    mass = tl.load(st_mass + _parent_ptrs(p, j, J, T, t), mask=ok, other=0.0)
    logit = tl.load(st_logit + _parent_ptrs(p, j, J, T, t), mask=ok, other=0.0)
    return mean, var_raw, tl.maximum(var_raw, 0.0) + min_var, mass, logit


@triton.jit
def _e_step_terms(var, logit):
    """Per-parent part of the E-step: ``1/sigma^2`` and ``ln a_j - 1/2 sum_h ln(2 pi sigma_h^2)``."""
    log_norm = -0.5 * (LOG_2PI * POSE + tl.sum(tl.log(var), axis=3, keep_dims=True))
    return 1.0 / var, log_norm + _logsigmoid(logit)


@triton.jit
def _coefficients(x, mean, inv_var, bias, jvalid):
    """``R_ij``: softmax over parent types of ``bias_j - 1/2 sum_h (x - mu)^2 / sigma^2``, ``[BP, BI, BJ, 1]``."""
    diff = x - mean
    logp = bias - 0.5 * tl.sum(diff * diff * inv_var, axis=3, keep_dims=True)
    logp = tl.where(jvalid, logp, -float("inf"))
    e = tl.exp(logp - tl.max(logp, axis=2, keep_dims=True))
    return e / tl.sum(e, axis=2, keep_dims=True)


@triton.jit
def _cost(var, mass, beta_u, cost_scale):
    """``(D beta_u + 1/2 sum_h ln sigma_h^2) * scale(r_j)`` and its first factor."""
    pre = POSE * beta_u + 0.5 * tl.sum(tl.log(var), axis=3, keep_dims=True)
    return pre * mass * cost_scale, pre


@triton.jit
def _standardised(cost, jvalid, J):
    """Google/IBM: ``(mean_J(cost) - cost) / std_J(cost)`` over the real parent types, and its parts."""
    real = jvalid.to(tl.float32)
    centred = (tl.sum(cost * real, axis=2, keep_dims=True) / J - cost) * real
    std = tl.sqrt(tl.sum(centred * centred, axis=2, keep_dims=True) / J + 1e-12)
    return centred / std, centred, std


@triton.jit
def _m_step_backward(g_mean, g_var, g_logit, g_logvar, mean, var_raw, var, mass, beta_u, lam, cost_scale,
                     jvalid, J, STANDARDISE: tl.constexpr):  # fmt: skip
    """Gradients of one M-step's outputs -> gradients of its sums over children.

    Returns ``(g_S1, g_S2, g_mass, g_beta_a, g_beta_u)`` where ``S1 = sum_i w x``,
    ``S2 = sum_i w x^2``, ``mass = sum_i w`` (``w = R a``); ``g_logvar`` is an extra
    gradient on ``sum_h ln sigma_h^2`` (from the next E-step's normaliser).
    """
    cost, pre = _cost(var, mass, beta_u, cost_scale)
    g_beta_a = lam * g_logit
    if STANDARDISE:
        _, centred, std = _standardised(cost, jvalid, J)
        real = jvalid.to(tl.float32)
        g_z = lam * g_logit * real
        g_centred = g_z / std - tl.sum(g_z * centred, axis=2, keep_dims=True) * centred / (J * std * std * std)
        g_cost = (tl.sum(g_centred * real, axis=2, keep_dims=True) / J - g_centred) * real
    else:
        g_cost = -lam * g_logit
    g_beta_u = POSE * mass * cost_scale * g_cost
    g_lv = 0.5 * mass * cost_scale * g_cost + g_logvar
    g_mass = pre * cost_scale * g_cost
    g_u = tl.where(var_raw >= 0.0, g_var + g_lv / var, 0.0)  # var = max(E[x^2] - mean^2, 0) + min_var
    g_mean_all = g_mean - 2.0 * mean * g_u
    den = mass + EPS
    second = var_raw + mean * mean  # E[x^2]
    g_mass += -tl.sum(g_mean_all * mean + g_u * second, axis=3, keep_dims=True) / den
    return g_mean_all / den, g_u / den, g_mass, g_beta_a, g_beta_u


@triton.jit
def _child_terms(x, a, r, g_s1, g_s2, g_mass):
    """Per child of one M-step: ``dL/dw_ij`` and the part of ``dL/dx_ij`` through the sums."""
    g_w = g_mass + tl.sum(g_s1 * x + g_s2 * x * x, axis=3, keep_dims=True)
    g_x = (r * a) * (g_s1 + 2.0 * g_s2 * x)
    return g_w, g_x


@triton.jit
def _softmax_backward(r, g_r):
    """Gradient through ``R = softmax_j(logp)``."""
    return r * (g_r - tl.sum(r * g_r, axis=2, keep_dims=True))


# ------------------------------------------------------------------ programs


@triton.jit
def em_forward_kernel(pose_ptr, act_ptr, w_ptr, beta_u_ptr, beta_a_ptr, lam_ptr,
                      out_pose_ptr, out_act_ptr, centre_ptr, st_mean, st_var, st_mass, st_logit,
                      P, I, J, min_var, cost_scale,
                      T: tl.constexpr, STANDARDISE: tl.constexpr,
                      BP: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):  # fmt: skip
    """One program per BP windows: the centre pass, then T M-steps, each fed by the E-step before it."""
    p, i0, j, d = _axes(BP, BI, BJ)
    p = p + tl.program_id(0).to(tl.int64) * BP
    jvalid = j < J
    ok = (p < P) & jvalid
    beta_u = tl.load(beta_u_ptr + j, mask=jvalid, other=0.0)
    beta_a = tl.load(beta_a_ptr + j, mask=jvalid, other=0.0)
    zero = tl.zeros([BP, 1, BJ, POSE], tl.float32)

    # centre: the activation-weighted mean vote of each parent (em.prepare_votes)
    wsum = zero
    amass = tl.zeros([BP, 1, 1, 1], tl.float32)
    for start in range(0, I, BI):
        i = start + i0
        a = _load_act(act_ptr, p, i, P, I)
        v = _centred_votes(pose_ptr, w_ptr, zero, p, i, j, d, P, I, J)
        wsum += tl.sum(a * v, axis=1, keep_dims=True)
        amass += tl.sum(a, axis=1, keep_dims=True)
    centre = wsum / (amass + EPS)
    tl.store(centre_ptr + (p * J + j) * POSE + d, centre, mask=ok)

    uniform = jvalid.to(tl.float32) / J  # R starts at 1/J
    mean, var, logit = zero, zero, tl.zeros([BP, 1, BJ, 1], tl.float32)
    for t in tl.static_range(T):
        if t > 0:
            inv_var, bias = _e_step_terms(var, logit)
        s1, s2 = zero, zero
        mass = tl.zeros([BP, 1, BJ, 1], tl.float32)
        for start in range(0, I, BI):
            i = start + i0
            a = _load_act(act_ptr, p, i, P, I)
            x = _centred_votes(pose_ptr, w_ptr, centre, p, i, j, d, P, I, J)
            if t == 0:
                w = a * uniform
            else:
                w = a * _coefficients(x, mean, inv_var, bias, jvalid)
            mass += tl.sum(w, axis=1, keep_dims=True)
            s1 += tl.sum(w * x, axis=1, keep_dims=True)
            s2 += tl.sum(w * x * x, axis=1, keep_dims=True)
        den = mass + EPS
        mean = s1 / den
        var_raw = s2 / den - mean * mean
        var = tl.maximum(var_raw, 0.0) + min_var
        cost, _ = _cost(var, mass, beta_u, cost_scale)
        lam = tl.load(lam_ptr + t)
        if STANDARDISE:
            z, _, _ = _standardised(cost, jvalid, J)
            logit = lam * (beta_a + z)
        else:
            logit = lam * (beta_a - cost)
        tl.store(st_mean + _window_ptrs(p, j, d, J, T, t), mean, mask=ok)
        tl.store(st_var + _window_ptrs(p, j, d, J, T, t), var_raw, mask=ok)
        tl.store(st_mass + _parent_ptrs(p, j, J, T, t), mass, mask=ok)
        tl.store(st_logit + _parent_ptrs(p, j, J, T, t), logit, mask=ok)
    tl.store(out_pose_ptr + (p * J + j) * POSE + d, mean + centre, mask=ok)
    tl.store(out_act_ptr + p * J + j, tl.sigmoid(logit), mask=ok)


@triton.jit
def em_backward_stats_kernel(pose_ptr, act_ptr, w_ptr, beta_u_ptr, lam_ptr, centre_ptr,
                             st_mean, st_var, st_mass, st_logit, g_pose_ptr, g_act_ptr,
                             gs_s1, gs_s2, gs_mass, g_beta_u_ptr, g_beta_a_ptr,
                             P, I, J, min_var, cost_scale,
                             T: tl.constexpr, STANDARDISE: tl.constexpr,
                             BP: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):  # fmt: skip
    """One program per BP windows: the iterations in reverse, one pass over children per E-step.

    Writes, per window and iteration, the gradients of the M-step sums (``g_S1, g_S2,
    g_mass``), from which :func:`em_backward_children_kernel` rebuilds every child's
    gradient, and the window's share of the beta gradients.
    """
    p, i0, j, d = _axes(BP, BI, BJ)
    p = p + tl.program_id(0).to(tl.int64) * BP
    jvalid = j < J
    ok = (p < P) & jvalid
    beta_u = tl.load(beta_u_ptr + j, mask=jvalid, other=0.0)
    centre = tl.load(centre_ptr + (p * J + j) * POSE + d, mask=ok, other=0.0)

    g_mean = tl.load(g_pose_ptr + (p * J + j) * POSE + d, mask=ok, other=0.0)
    mean, var_raw, var, mass, logit = _load_stats(st_mean, st_var, st_mass, st_logit, p, j, d, P, J, min_var, T, T - 1)
    act = tl.sigmoid(logit)
    g_logit = tl.load(g_act_ptr + p * J + j, mask=ok, other=0.0) * act * (1.0 - act)
    g_var = tl.zeros([BP, 1, BJ, POSE], tl.float32)
    g_logvar = tl.zeros([BP, 1, BJ, 1], tl.float32)
    g_beta_a = tl.zeros([BP, 1, BJ, 1], tl.float32)
    g_beta_u = tl.zeros([BP, 1, BJ, 1], tl.float32)
    for t in tl.static_range(T - 1, -1, -1):
        lam = tl.load(lam_ptr + t)
        g_s1, g_s2, g_m, g_ba, g_bu = _m_step_backward(
            g_mean, g_var, g_logit, g_logvar, mean, var_raw, var, mass, beta_u, lam, cost_scale, jvalid, J, STANDARDISE
        )
        g_beta_a += g_ba
        g_beta_u += g_bu
        tl.store(gs_s1 + _window_ptrs(p, j, d, J, T, t), g_s1, mask=ok)
        tl.store(gs_s2 + _window_ptrs(p, j, d, J, T, t), g_s2, mask=ok)
        tl.store(gs_mass + _parent_ptrs(p, j, J, T, t), g_m, mask=ok)
        if t > 0:
            # R of iteration t came from the E-step on iteration t-1's statistics
            mean, var_raw, var, mass, logit = _load_stats(
                st_mean, st_var, st_mass, st_logit, p, j, d, P, J, min_var, T, t - 1
            )
            inv_var, bias = _e_step_terms(var, logit)
            sum_g = tl.zeros([BP, 1, BJ, 1], tl.float32)
            sum_gz = tl.zeros([BP, 1, BJ, POSE], tl.float32)
            sum_gzz = tl.zeros([BP, 1, BJ, POSE], tl.float32)
            for start in range(0, I, BI):
                i = start + i0
                a = _load_act(act_ptr, p, i, P, I)
                x = _centred_votes(pose_ptr, w_ptr, centre, p, i, j, d, P, I, J)
                r = _coefficients(x, mean, inv_var, bias, jvalid)
                g_w, _ = _child_terms(x, a, r, g_s1, g_s2, g_m)
                g_logp = _softmax_backward(r, g_w * a)
                z = (x - mean) * inv_var
                sum_g += tl.sum(g_logp, axis=1, keep_dims=True)
                sum_gz += tl.sum(g_logp * z, axis=1, keep_dims=True)
                sum_gzz += tl.sum(g_logp * z * z, axis=1, keep_dims=True)
            # ln p = bias - 1/2 sum ln sigma^2 (inside bias) - 1/2 sum (x - mu)^2 / sigma^2 + ln sigmoid(logit)
            g_mean = sum_gz
            g_var = 0.5 * sum_gzz
            g_logvar = -0.5 * sum_g
            g_logit = sum_g * tl.sigmoid(-logit)
    tl.store(g_beta_u_ptr + p * J + j, g_beta_u, mask=ok)
    tl.store(g_beta_a_ptr + p * J + j, g_beta_a, mask=ok)


@triton.jit
def em_backward_children_kernel(pose_ptr, act_ptr, w_ptr, centre_ptr, st_mean, st_var, st_mass, st_logit,
                                gs_s1, gs_s2, gs_mass, g_pose_ptr, g_act_ptr, g_w_ptr,
                                P, I, J, min_var, windows_per_program,
                                T: tl.constexpr,
                                BP: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):  # fmt: skip
    """One program per (BI children, a run of windows): every child's gradient, all iterations at once.

    Writes the child pose and activation gradients, and this run's partial sum of the
    weight gradient ``[I, J, 16]`` (summed over runs afterwards: no atomics, deterministic).
    """
    p0, i, j, d = _axes(BP, BI, BJ)
    i = i + tl.program_id(0) * BI
    run = tl.program_id(1).to(tl.int64)
    jvalid = j < J
    uniform = jvalid.to(tl.float32) / J
    w0 = _load_w(w_ptr, i, j, d, I, J, 0)
    w1 = _load_w(w_ptr, i, j, d, I, J, 1)
    w2 = _load_w(w_ptr, i, j, d, I, J, 2)
    w3 = _load_w(w_ptr, i, j, d, I, J, 3)
    acc0 = tl.zeros([BI, BJ, 4], tl.float32)
    acc1 = tl.zeros([BI, BJ, 4], tl.float32)
    acc2 = tl.zeros([BI, BJ, 4], tl.float32)
    acc3 = tl.zeros([BI, BJ, 4], tl.float32)
    first = run * windows_per_program
    last = tl.minimum(first + windows_per_program, P)
    for start in range(first, last, BP):
        p = start + p0
        ok = (p < last) & jvalid
        a = _load_act(act_ptr, p, i, last, I)
        centre = tl.load(centre_ptr + (p * J + j) * POSE + d, mask=ok, other=0.0)
        u0 = _load_u(pose_ptr, p, i, d, last, I, 0)
        u1 = _load_u(pose_ptr, p, i, d, last, I, 1)
        u2 = _load_u(pose_ptr, p, i, d, last, I, 2)
        u3 = _load_u(pose_ptr, p, i, d, last, I, 3)
        x = u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3 - centre
        g_x = tl.zeros([BP, BI, BJ, POSE], tl.float32)
        g_a = tl.zeros([BP, BI, 1, 1], tl.float32)
        for t in tl.static_range(T):
            g_s1 = tl.load(gs_s1 + _window_ptrs(p, j, d, J, T, t), mask=ok, other=0.0)
            g_s2 = tl.load(gs_s2 + _window_ptrs(p, j, d, J, T, t), mask=ok, other=0.0)
            g_m = tl.load(gs_mass + _parent_ptrs(p, j, J, T, t), mask=ok, other=0.0)
            if t == 0:
                r = uniform
            else:
                mean, _, var, _, logit = _load_stats(st_mean, st_var, st_mass, st_logit, p, j, d, last, J, min_var,
                                                     T, t - 1)  # fmt: skip
                inv_var, bias = _e_step_terms(var, logit)
                r = _coefficients(x, mean, inv_var, bias, jvalid)
            g_w, g_x_sums = _child_terms(x, a, r, g_s1, g_s2, g_m)
            g_x += g_x_sums
            g_a += tl.sum(g_w * r, axis=2, keep_dims=True)
            if t > 0:
                g_logp = _softmax_backward(r, g_w * a)
                g_x -= g_logp * (x - mean) * inv_var  # through -1/2 (x - mu)^2 / sigma^2
        tl.store(g_act_ptr + p * I + i, g_a, mask=(p < last) & (i < I))
        # child pose: dL/dU[r, k] = sum_j sum_c g_x[j, 4r + c] W[j, k, c]; weight: sum_p sum_r U[r, k] g_x[4r + c]
        p3 = start + tl.arange(0, BP)[:, None, None]
        i3 = tl.program_id(0) * BI + tl.arange(0, BI)[None, :, None]
        pose_ptrs = g_pose_ptr + (p3 * I + i3) * POSE + tl.arange(0, 4)[None, None, :] * 4
        pose_ok = (p3 < last) & (i3 < I)
        g_u = tl.sum(tl.reshape(tl.sum(g_x * w0, axis=2), [BP, BI, 4, 4]), axis=3)
        tl.store(pose_ptrs + 0, g_u, mask=pose_ok)
        g_u = tl.sum(tl.reshape(tl.sum(g_x * w1, axis=2), [BP, BI, 4, 4]), axis=3)
        tl.store(pose_ptrs + 1, g_u, mask=pose_ok)
        g_u = tl.sum(tl.reshape(tl.sum(g_x * w2, axis=2), [BP, BI, 4, 4]), axis=3)
        tl.store(pose_ptrs + 2, g_u, mask=pose_ok)
        g_u = tl.sum(tl.reshape(tl.sum(g_x * w3, axis=2), [BP, BI, 4, 4]), axis=3)
        tl.store(pose_ptrs + 3, g_u, mask=pose_ok)
        acc0 += tl.sum(tl.reshape(tl.sum(u0 * g_x, axis=0), [BI, BJ, 4, 4]), axis=2)
        acc1 += tl.sum(tl.reshape(tl.sum(u1 * g_x, axis=0), [BI, BJ, 4, 4]), axis=2)
        acc2 += tl.sum(tl.reshape(tl.sum(u2 * g_x, axis=0), [BI, BJ, 4, 4]), axis=2)
        acc3 += tl.sum(tl.reshape(tl.sum(u3 * g_x, axis=0), [BI, BJ, 4, 4]), axis=2)
    # partial weight gradient of this run: [runs, I, J, 4 (k), 4 (c)]
    col = tl.arange(0, 4)[None, None, :]
    wi = tl.program_id(0) * BI + tl.arange(0, BI)[:, None, None]
    wj = tl.arange(0, BJ)[None, :, None]
    w_ptrs = g_w_ptr + ((run * I + wi) * J + wj) * POSE + col
    w_ok = (wi < I) & (wj < J)
    tl.store(w_ptrs + 0, acc0, mask=w_ok)
    tl.store(w_ptrs + 4, acc1, mask=w_ok)
    tl.store(w_ptrs + 8, acc2, mask=w_ok)
    tl.store(w_ptrs + 12, acc3, mask=w_ok)

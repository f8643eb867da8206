"""The compiled CPU EM kernel (``routing/native``) against the reference path, and its build fallback.

Tiny layers (ConvCaps 3 -> 4 types on 4x4 maps, ClassCaps with shared weights and coordinate
addition): outputs, coefficients and every gradient equal the reference path to 1e-10 relative
in fp64 and to 1e-5 / 1e-4 in fp32; a silent child changes nothing bit for bit; gradients are
bit-identical on one and two threads; a failed build warns once and the PyTorch paths run.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from test_fused_routing import assert_paths_agree, assert_relative, inputs, pair, run

from capsbench.capsules.layers import ConvCaps
from capsbench.capsules.routing import fused
from capsbench.capsules.routing.native import blocks, build, cpu_em
from capsbench.capsules.types import Capsules


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls that reach the compiled kernel (so a test knows the kernel, not a fallback, ran)."""
    calls = []
    real = cpu_em.em_routing_cpu

    def counted(*args, **kwargs):
        calls.append(kwargs["need_coefficients"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_em, "em_routing_cpu", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer", ["conv_k3_s1_p1", "conv_k3_s2_p0", "class_shared", "class_conv"])
@pytest.mark.parametrize(
    "options,iterations", [({}, 3), ({}, 1), ({"cost": "mean"}, 2)], ids=["sum-3", "sum-1", "mean-2"]
)
def test_kernel_equals_the_reference(layer, options, iterations, dtype, kernel_calls):
    assert_paths_agree(*pair(layer, options, dtype, iterations), dtype)
    assert kernel_calls == [True]  # the layer keeps its coefficients by default: the kernel returned them


def test_kernel_serves_calls_without_coefficients(kernel_calls):
    ref, fus = pair("conv_k3_s1_p1", {}, torch.float64, keep_coefficients=False)
    pose, act = inputs(torch.float64)
    (a, ga), (b, gb) = run(ref, pose, act), run(fus, pose, act)
    assert kernel_calls == [False] and b["coefficients"] is None
    torch.testing.assert_close(b["pose"], a["pose"], rtol=1e-10, atol=0)
    for key in ga:
        torch.testing.assert_close(gb[key], ga[key], rtol=1e-10, atol=1e-12)


def test_kernel_takes_any_lambda_schedule(kernel_calls):
    options = {"final_lambda": 1e-3, "lambda_schedule": "fixed"}
    assert_paths_agree(*pair("conv_k3_s1_p1", options, torch.float64, 3), torch.float64)
    assert kernel_calls == [True]


# the reference variants and the control (em.py's docstring), alone and together; "uniform" runs one M-step
VARIANTS = {
    "one": {"initial_coefficients": "one"},
    "uniform": {"coefficients": "uniform"},
    "renormalise": {"renormalise": True},
    "renormalise-one": {"renormalise": True, "initial_coefficients": "one"},
    "uniform-renormalise-one": {"coefficients": "uniform", "renormalise": True, "initial_coefficients": "one"},
    "yl1993": {"renormalise": True, "final_lambda": 1e-3, "lambda_schedule": "fixed"},
}


@pytest.mark.parametrize("layer", ["conv_k3_s1_p1", "class_shared"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_kernel_serves_every_variant_as_the_reference_computes_it(variant, layer, kernel_calls):
    assert_paths_agree(*pair(layer, VARIANTS[variant], torch.float64, 3), torch.float64)
    assert kernel_calls == [True]


def _float32_run(layer, pose, act, dtype):
    """Outputs and every gradient of ``layer`` run in ``dtype`` on the given float64 inputs (a float64
    random linear loss, cast: the same loss in both dtypes)."""
    layer = copy.deepcopy(layer).to(dtype)
    pose, act = pose.to(dtype).clone().requires_grad_(), act.to(dtype).clone().requires_grad_()
    out = layer(Capsules(pose, act))
    g = torch.Generator().manual_seed(1)
    w_pose, w_act = (
        torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (out.pose, out.activation)
    )
    ((out.pose * w_pose).sum() + (out.activation * w_act).sum()).backward()
    grads = {name: p.grad for name, p in layer.named_parameters() if p.grad is not None}
    return {"pose": out.pose, "activation": out.activation, "grad child pose": pose.grad,
            "grad child activation": act.grad, **grads}  # fmt: skip


@pytest.mark.parametrize("layer", ["conv_k3_s1_p1", "class_shared"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_float32_kernel_is_within_float32_tolerances_of_the_exact_reference(variant, layer, kernel_calls):
    """float32 kernel against the float64 reference (exact to ~1e-15): 1e-5 outputs, 1e-4 gradients.

    Against the float64 values, not the float32 reference: with ``renormalise`` the child activation
    gradient is eps / den^2 times a sum (the rest cancels), which the reference's autograd gets as the
    difference of two nearly equal sums, 10% off in float32; the kernel writes the cancelled form."""
    ref, fus = pair(layer, VARIANTS[variant], torch.float64, 3)
    pose, act = inputs(torch.float64)
    exact, got = _float32_run(ref, pose, act, torch.float64), _float32_run(fus, pose, act, torch.float32)
    assert kernel_calls == [True] and set(exact) == set(got)
    largest = max(v.abs().max().item() for k, v in exact.items() if k.startswith("grad"))
    for key, value in exact.items():
        grad = key.startswith("grad")
        floor = 1e-3 * largest if grad else 1e-6
        assert_relative(got[key].double(), value, 1e-4 if grad else 1e-5, key, floor=floor)


@pytest.mark.parametrize("variant", ["one", "renormalise-one"])
def test_one_iteration_returns_the_initial_uniform_coefficients(variant, kernel_calls):
    """With a single M-step (and R = 1 in it) the coefficients are the normaliser's initial 1/J, as em.py's."""
    assert_paths_agree(*pair("conv_k3_s1_p1", VARIANTS[variant], torch.float64, 1), torch.float64)
    assert kernel_calls == [True]


def _every_discrete_option_combination() -> list[dict]:
    """Every combination of EM's declared options that take a few values (choices and booleans)."""
    import itertools

    from capsbench.capsules.routing import declared_options

    values = {
        name: option.choices if option.choices is not None else (False, True)
        for name, option in declared_options.EM.items()
        if option.choices is not None or option.type is bool
    }
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


COMBINATIONS = _every_discrete_option_combination()


@pytest.mark.parametrize("options", COMBINATIONS, ids=["-".join(map(str, c.values())) for c in COMBINATIONS])
def test_every_option_combination_the_kernel_claims_equals_the_reference(options, monkeypatch):
    """``_cpu_kernel_covers`` claims nothing the kernel gets wrong: every combination of EM's discrete
    options (a new option value included, once declared) equals the reference path, on the kernel where
    it is claimed, on the PyTorch path where it is not."""
    ref, fus = pair("conv_k3_s1_p1", options, torch.float64, 2)
    calls = []
    real = cpu_em.em_routing_cpu
    monkeypatch.setattr(cpu_em, "em_routing_cpu", lambda *a, **k: calls.append(k["variant"]) or real(*a, **k))
    assert_paths_agree(ref, fus, torch.float64)
    assert calls == ([fus.routing._kernel_variant()] if fus.routing._cpu_kernel_covers() else [])


@pytest.mark.parametrize("options", [{"cost": "standardise"}, {"normalise": "receiving_parents"}])
def test_options_the_kernel_does_not_cover_take_the_pytorch_path(options, kernel_calls):
    ref, fus = pair("conv_k3_s1_p1", options, torch.float64)
    pose, act = inputs(torch.float64)
    run(fus, pose, act)
    assert fus.last_impl == "fused" and kernel_calls == []


@pytest.mark.parametrize("variant", ["default", *VARIANTS])
def test_a_silent_child_changes_nothing_bit_for_bit(variant, kernel_calls):
    torch.manual_seed(0)
    layer = ConvCaps(3, 4, 3, 1, 1, routing="em", routing_impl="fused", **VARIANTS.get(variant, {}))
    pose, act = inputs(torch.float32)
    act[:, 1] = 0.0
    moved = pose.clone()
    moved[:, 1] = 1e3 * torch.randn_like(moved[:, 1])
    pose.requires_grad_(), moved.requires_grad_()
    a, b = layer(Capsules(pose, act)), layer(Capsules(moved, act))
    assert torch.equal(a.pose, b.pose) and torch.equal(a.activation, b.activation)
    (a.pose.sum() + a.activation.sum()).backward()
    assert (pose.grad[:, 1] == 0).all()  # a silent child's pose gets no gradient
    assert len(kernel_calls) == 2


def test_gradients_are_bit_identical_on_one_and_two_threads():
    """Weight and beta gradients are per-block partials summed in block order: no thread-count dependence.

    The kernel itself, called directly: the layer around it (its pose BatchNorm) uses torch reductions
    whose rounding may follow the thread count.
    """
    g = torch.Generator().manual_seed(0)
    windows, children, parents = 108, 36, 4  # 7 blocks
    leaves = [torch.randn(windows, children, 16, generator=g), torch.rand(windows, children, generator=g),
              torch.randn(children, parents, 4, 4, generator=g), torch.randn(parents, generator=g),
              torch.randn(parents, generator=g)]  # fmt: skip
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the autouse fixture restores the count afterwards
        inputs_ = [t.clone().requires_grad_() for t in leaves]
        pose, act, coef = cpu_em.em_routing_cpu(
            *inputs_, None, lambdas=(5e-3, 1e-2, 2e-2), min_var=5e-4, cost="sum", need_coefficients=True
        )
        ((pose * pose.detach()).sum() + act.sum()).backward()
        results.append([pose, act, coef] + [t.grad for t in inputs_])
    assert len(blocks.blocks(windows)) > 2
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_a_failed_build_warns_once_and_the_pytorch_path_runs(broken_compiler, kernel_calls):
    ref, fus = pair("conv_k3_s1_p1", {}, torch.float64)
    with pytest.warns(RuntimeWarning, match="CPU EM kernel could not be built with .*no-such-compiler"):
        assert_paths_agree(ref, fus, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second forward is silent
        run(fus, *inputs(torch.float64))
    assert kernel_calls == [] and fus.last_impl == "fused"  # the blockwise PyTorch path ran


def test_auto_takes_the_kernel_only_where_it_builds(broken_compiler, monkeypatch):
    monkeypatch.setattr(fused, "MEASURED_FASTER", {("em", "cpu"): True})
    layer = ConvCaps(3, 4, 3, 1, 1, routing="em")
    with pytest.warns(RuntimeWarning):
        layer(Capsules(*inputs(torch.float32)))
    assert layer.last_impl == "reference"  # measured faster is the kernel's claim: without it, the reference
    monkeypatch.delenv("CAPSBENCH_CC")
    build.forget()
    layer(Capsules(*inputs(torch.float32)))
    assert layer.last_impl == "fused"


def test_the_library_is_cached_by_source_and_compiler_and_written_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path))
    first = build._build(torch.float32)
    stamp = first.stat().st_mtime_ns
    assert build._build(torch.float32) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert first.parent == tmp_path / "native" and not list(first.parent.glob("*.tmp"))
    edited = tmp_path / "edited.c"
    edited.write_text(build.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(build, "SOURCE", edited)
    assert build._build(torch.float32) != first  # another source, another key


def _kernel_run(dtype, parents, offsets, variant=0, seed=0):
    """Outputs and every gradient of the kernel called directly (windows in several blocks)."""
    g = torch.Generator().manual_seed(seed)
    windows, children = 40, 18
    shapes = [(windows, children, 16), (windows, children), (children, parents, 4, 4), (parents,), (parents,)]
    leaves = [torch.randn(shape, generator=g, dtype=dtype) for shape in shapes]
    leaves[1] = leaves[1].abs().clamp_max(1)  # activations in [0, 1]
    leaves[1][:, 3] = 0  # a silent child
    off = torch.randn(children, 16, generator=g, dtype=dtype) if offsets else None
    ins = [t.clone().requires_grad_() for t in leaves]
    pose, act, coef = cpu_em.em_routing_cpu(
        *ins, off, lambdas=(5e-3, 1e-2, 2e-2), min_var=5e-4, cost="sum", need_coefficients=True, variant=variant
    )
    ((pose * torch.randn(pose.shape, generator=g, dtype=dtype)).sum() + (act * act).sum()).backward()
    return [pose, act, coef] + [t.grad for t in ins]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("parents,offsets", [(16, False), (5, True)], ids=["J16", "J5-offsets"])
@pytest.mark.parametrize(
    "variant", [0, cpu_em.RENORMALISE, cpu_em.INITIAL_ONE | cpu_em.RENORMALISE], ids=["default", "renorm", "renorm-one"]
)
def test_every_instruction_set_gives_the_same_bits(dtype, parents, offsets, variant, same_bits_on_every_isa):
    """SSE2, AVX2 and AVX-512 builds: lanes are independent, cross-lane sums have one order, no FMA."""
    same_bits_on_every_isa(lambda: _kernel_run(dtype, parents, offsets, variant), lambda: cpu_em.backend(dtype))


def test_an_unknown_instruction_set_is_one_line_naming_the_variable(monkeypatch):
    from capsbench.errors import UserError

    monkeypatch.setenv(build.ISA_SWITCH, "mmx")
    build.forget()
    try:
        with pytest.raises(UserError, match="CAPSBENCH_CPU_ISA must be one of sse2, avx2, avx512, got 'mmx'"):
            build.load(torch.float32)
    finally:
        build.forget()


def test_the_backward_from_the_saved_state_equals_the_recomputing_backward():
    """The forward keeps each window's coefficients and statistics; recomputing them gives the same bits."""
    g = torch.Generator().manual_seed(3)
    leaves = [torch.randn(20, 9, 16, generator=g), torch.rand(20, 9, generator=g), torch.randn(9, 4, 4, 4, generator=g),
              torch.randn(4, generator=g), torch.randn(4, generator=g)]  # fmt: skip
    grads = []
    for keep_state in (True, False):
        ins = [t.clone().requires_grad_() for t in leaves]
        pose, act, _ = cpu_em._EMWindows.apply(*ins, None, (1e-2, 2e-2), 5e-4, 1.0, False, keep_state)
        (pose.sum() + act.sum()).backward()
        grads.append([t.grad for t in ins])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_no_state_is_kept_without_a_backward_to_come(monkeypatch):
    seen = []
    real = cpu_em._EMWindows.apply
    monkeypatch.setattr(cpu_em._EMWindows, "apply", lambda *args: seen.append(args[10]) or real(*args))  # keep_state
    pose, act = torch.randn(4, 9, 16), torch.rand(4, 9)
    weight, beta = torch.randn(9, 4, 4, 4, requires_grad=True), torch.zeros(4)
    options = dict(lambdas=(1e-2,), min_var=5e-4, cost="sum", need_coefficients=False)
    with torch.no_grad():
        cpu_em.em_routing_cpu(pose, act, weight, beta, beta, None, **options)
    cpu_em.em_routing_cpu(pose, act, weight, beta, beta, None, **options)
    assert seen == [False, True]


# Largest error of the kernel's vectorised exp: float32 against the exact value (float64 exp), float64
# against libm (Python's math.exp), in units in the last place of the result. Measured: 1.22 and 1.0.
EXP_MAX_ULP = {torch.float32: 1.25, torch.float64: 1.0}
EXP_LOWEST = {torch.float32: -87.336544, torch.float64: -708.39641853226408}  # ln of the smallest normal


def _ulps(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|y - exact| in units of the last place of ``exact`` rounded to y's dtype."""
    rounded = exact.to(y.dtype).abs()
    spacing = torch.nextafter(rounded, torch.full_like(rounded, float("inf"))) - rounded
    return (y.double() - exact).abs() / spacing.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_the_vectorised_exp_is_within_its_documented_error_over_the_range_the_e_step_uses(dtype):
    import math

    kernel = build.load(dtype)
    points = 1 << 22 if dtype == torch.float32 else 1 << 16
    x = torch.linspace(EXP_LOWEST[dtype], 0.0, points, dtype=torch.float64).to(dtype)
    near_zero = -torch.rand(points // 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, near_zero.to(dtype)])
    y = torch.empty_like(x)
    kernel.exp_values(x.numel(), x.data_ptr(), y.data_ptr())
    if dtype == torch.float32:
        exact = torch.exp(x.double())
    else:
        exact = torch.tensor([math.exp(v) for v in x.tolist()], dtype=torch.float64)
    assert float(_ulps(y, exact).max()) <= EXP_MAX_ULP[dtype]
    special = torch.tensor([0.0, -0.0, float("-inf"), float("nan"), EXP_LOWEST[dtype] - 1], dtype=dtype)
    out = torch.empty_like(special)
    kernel.exp_values(special.numel(), special.data_ptr(), out.data_ptr())
    assert out[:2].tolist() == [1.0, 1.0] and out[2] == 0 and out[3].isnan() and out[4] == 0


def _terms_and_outputs(layer, pose, act, diagnostics):
    """The layer's outputs and its routing's ``last_terms``, as telemetry evaluates (eval mode, no autograd)."""
    layer.eval()
    layer.routing.diagnostics, layer.routing.last_terms = diagnostics, None
    with torch.no_grad():
        out = layer(Capsules(pose, act))
    layer.routing.diagnostics = False
    return out, layer.routing.last_terms


@pytest.mark.parametrize("layer", ["conv_k3_s1_p1", "class_shared"])
@pytest.mark.parametrize("variant", ["default", "mean", "standardise", *VARIANTS])
def test_diagnostics_keep_the_fast_path_and_fill_the_reference_terms(variant, layer, kernel_calls, monkeypatch):
    """Telemetry's activation terms on the fast path (the kernel; the blockwise PyTorch path for the cost the
    kernel does not cover) equal the reference path's, over several blocks of windows, and turning the
    diagnostics on changes no output of the fast path (it used to fall back to the reference path)."""
    monkeypatch.setattr(fused, "BLOCK_BYTES", 4096)  # several blocks: the terms are gathered across them
    options = {"default": {}, "mean": {"cost": "mean"}, "standardise": {"cost": "standardise"}}.get(variant)
    ref, fus = pair(layer, VARIANTS[variant] if options is None else options, torch.float64, 3)
    pose, act = inputs(torch.float64)
    expected_out, expected = _terms_and_outputs(ref, pose, act, True)
    plain_out, _ = _terms_and_outputs(fus, pose, act, False)
    out, terms = _terms_and_outputs(fus, pose, act, True)
    assert fus.last_impl == "fused"
    assert kernel_calls == ([] if variant == "standardise" else [True, True])
    assert list(terms) == list(expected)  # the same names, in the same order
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, rtol=1e-9, atol=1e-12, msg=key)
    assert torch.equal(out.pose, plain_out.pose) and torch.equal(out.activation, plain_out.activation)
    torch.testing.assert_close(out.activation, expected_out.activation, rtol=1e-9, atol=1e-12)

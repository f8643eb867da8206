"""The compiled CPU VB kernel (``routing/native/vb_window.c``) against the reference path, and its fallbacks.

Through the real layers (ConvCaps with overlapping and strided windows, ClassCaps with per-position
and shared weights plus coordinate addition) and at the real window size (144 children, 16
parents): poses, activations, coefficients and every gradient equal the reference path to 1e-10
relative in fp64 and to 1e-5 / 1e-4 in fp32, over iterations and options; a silent child changes
nothing bit for bit (``test_fused_routing`` also runs its silent-children and no-votes-stored tests on
VB's fused path, hence here); extreme pose scales stay finite and agree; results are bit-identical on one
and two threads; a failed build warns once and the PyTorch paths run; ``auto`` takes the kernel
only where it builds.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_fused_routing import assert_paths_agree, assert_relative, inputs, pair, run

from capsbench.capsules.layers import ConvCaps
from capsbench.capsules.routing import fused
from capsbench.capsules.routing.native import blocks, build, cpu_vb
from capsbench.capsules.routing.votes import LazyVotes
from capsbench.capsules.types import Capsules


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the layer calls the compiled kernel serves (so a test knows the kernel, not a fallback, ran)."""
    calls = []
    real = cpu_vb.Windows

    def counted(*args, **kwargs):
        calls.append(args[2])  # the compute dtype
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_vb, "Windows", counted)
    return calls


def vb_pair(layer, options, dtype, iterations):
    if dtype == torch.float32:
        # VB's BatchNorms over 2-8 values per type (these tiny layers) amplify fp32 rounding past any
        # fixed tolerance on both paths alike (as in test_fused_routing); fp64 covers the BNs
        options = {**options, "activation_bn": False, "pose_bn": False}
    return pair(layer, options, dtype, iterations, routing="vb")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer", ["conv_k3_s1_p1", "conv_k3_s2_p0", "class_shared", "class_conv"])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_kernel_equals_the_reference_over_iterations(layer, iterations, dtype, kernel_calls):
    assert_paths_agree(*vb_pair(layer, {}, dtype, iterations), dtype)
    assert kernel_calls == [dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    "options",
    [{"normalise": "parents"}, {"log_det": "wishart"}, {"coefficients": "uniform"},
     {"alpha0": 0.3, "kappa0": 2.0, "nu0": 20.0, "psi0": 0.5, "m0": 0.2}, {"activation_bn": False}],
    ids=["parents", "wishart", "uniform", "priors", "no-activation-bn"],
)  # fmt: skip
def test_kernel_equals_the_reference_for_every_option(options, dtype, kernel_calls):
    assert_paths_agree(*vb_pair("conv_k3_s1_p1", options, dtype, 3), dtype)
    assert kernel_calls == [dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_kernel_equals_the_reference_at_the_real_window_size(dtype, kernel_calls):
    """144 children (3x3 windows of 16 types) routed to 16 parents, every child in up to 9 windows."""
    made = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        made.append(ConvCaps(16, 16, 3, 1, 1, routing="vb", routing_impl=impl, pose_bn=False).to(dtype))
    ref, fus = made
    fus.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(2, 16, 16, 3, 3, generator=g, dtype=dtype)
    act = torch.rand(2, 16, 3, 3, generator=g, dtype=dtype)
    (a, ga), (b, gb) = run(ref, pose, act), run(fus, pose, act)
    out_tol, grad_tol = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    for key in ("pose", "activation"):
        assert_relative(b[key], a[key], out_tol, key)
    assert_relative(b["coefficients"], a["coefficients"], grad_tol, "coefficients")
    largest = max(g.abs().max().item() for g in ga.values())
    for key in ga:
        assert_relative(gb[key], ga[key], grad_tol, key, floor=1e-3 * largest)
    assert kernel_calls == [dtype]


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
@pytest.mark.parametrize("activation", ["zeros", "ones", "random"])
def test_extreme_pose_scales_stay_finite_and_agree_with_the_reference(scale, activation, kernel_calls):
    """fp32 through a ConvCaps at pose scales 1e-6 to 1e6, activations exactly 0, exactly 1 or random."""
    made = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        made.append(ConvCaps(2, 3, 3, 1, 1, routing="vb", routing_impl=impl))
    ref, fus = made
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(2, 2, 16, 3, 3, generator=g) * scale
    make = {"zeros": torch.zeros, "ones": torch.ones, "random": lambda *s: torch.rand(*s, generator=g)}
    act = make[activation](2, 2, 3, 3)
    (a, _), (b, gb) = run(ref, pose, act), run(fus, pose, act)
    for key in ("pose", "activation", "coefficients"):
        assert torch.isfinite(b[key]).all(), key
    assert ((b["activation"] >= 0) & (b["activation"] <= 1)).all()
    for key in gb:
        assert torch.isfinite(gb[key]).all(), key
    # the activations are where the routing's numbers meet: the same on both paths
    torch.testing.assert_close(b["activation"], a["activation"], rtol=1e-4, atol=1e-5)
    assert kernel_calls == [torch.float32]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_silent_child_changes_nothing_bit_for_bit(training, kernel_calls):
    torch.manual_seed(0)
    layer = ConvCaps(3, 4, 3, 1, 1, routing="vb", routing_impl="fused").train(training)
    pose, act = inputs(torch.float32)
    act[:, 1] = 0.0  # every child of type 1 is silent
    moved = pose.clone()
    moved[:, 1] = 1e3 * torch.randn_like(moved[:, 1])
    pose.requires_grad_(), moved.requires_grad_()
    a = layer(Capsules(pose, act))  # training: batch statistics, so the running ones do not matter
    b = layer(Capsules(moved, act))
    assert torch.equal(a.pose, b.pose) and torch.equal(a.activation, b.activation)
    (a.pose.sum() + a.activation.sum()).backward()
    assert (pose.grad[:, 1] == 0).all()  # a silent child's pose gets no gradient
    assert len(kernel_calls) == 2


def _passes_run(dtype, offsets=False, windows=108, children=36, parents=4):
    """Outputs and gradients of two kernel passes called directly (108 windows: 7 blocks), a silent child
    among them. The normalisation and BatchNorms around the passes are torch reductions whose rounding
    may follow the thread count or instruction set, so they stay out."""
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(windows, 1, children, 16, generator=g, dtype=dtype),
              0.3 * torch.randn(children, parents, 4, 4, generator=g, dtype=dtype)]  # fmt: skip
    act = torch.rand(windows, 1, children, generator=g, dtype=dtype)
    act[:, :, 3] = 0
    off = torch.randn(children, 16, generator=g, dtype=dtype) if offsets else None
    r0 = torch.softmax(torch.randn(windows, 1, parents, children, generator=g, dtype=dtype), dim=2)
    pose, weight = (t.clone().requires_grad_() for t in leaves)
    r = r0.clone().requires_grad_()
    votes = LazyVotes(pose=pose, weight=weight, offsets=off)
    win = cpu_vb.Windows(votes, act, dtype, (1.0, 1.0, 17.0, 1.0, 0.0), False)
    logits = win.log_rho(r)
    mass, mean, prec, centre = win.posterior(torch.softmax(logits, dim=2))
    ((logits * logits.detach()).sum() + mass.sum() + (mean * mean.detach()).sum() + prec.sum()).backward()
    return [logits, mass, mean, prec, centre, pose.grad, weight.grad, r.grad]


def test_results_are_bit_identical_on_one_and_two_threads():
    """Weight gradients are per-block partials summed in block order: no thread-count dependence."""
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the autouse fixture restores the count afterwards
        results.append(_passes_run(torch.float32))
    assert len(blocks.blocks(108)) > 2
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("parents,offsets", [(16, False), (5, True)], ids=["J16", "J5-offsets"])
def test_every_instruction_set_gives_the_same_bits(dtype, parents, offsets, same_bits_on_every_isa):
    """SSE2, AVX2 and AVX-512 builds of vb_window.c: one order for every sum, no FMA."""
    same_bits_on_every_isa(lambda: _passes_run(dtype, offsets, parents=parents), lambda: cpu_vb.backend(dtype))


def test_the_layer_reports_the_build_that_ran(monkeypatch, instruction_sets):
    """``last_backend``, which records carry as ``environment.routing_backend``: the forced build's name."""
    layer = ConvCaps(3, 4, 3, 1, 1, routing="vb", routing_impl="fused")
    for isa in instruction_sets:
        monkeypatch.setenv(build.ISA_SWITCH, isa)
        build.forget()
        layer(Capsules(*inputs(torch.float32)))
        assert layer.last_backend == f"c-{isa}"
    small = ConvCaps(3, 4, 3, 1, 1, routing="vb", routing_impl="fused", pose_dim=4)
    small(Capsules(torch.randn(2, 3, 4, 4, 4), torch.rand(2, 3, 4, 4)))  # 2x2 poses: the kernel does not serve
    assert small.last_backend == "torch"


def test_diagnostics_fill_the_same_terms_on_the_kernel_path(kernel_calls):
    ref, fus = vb_pair("conv_k3_s1_p1", {}, torch.float64, 3)
    pose, act = inputs(torch.float64)
    for layer in (ref, fus):
        layer.routing.diagnostics = True
        layer(Capsules(pose, act))
    assert kernel_calls == [torch.float64]
    assert set(fus.routing.last_terms) == set(ref.routing.last_terms)
    for key, value in ref.routing.last_terms.items():
        torch.testing.assert_close(fus.routing.last_terms[key], value, rtol=1e-9, atol=1e-12)


def test_the_switch_turns_the_kernel_off(monkeypatch, kernel_calls):
    monkeypatch.setenv(cpu_vb.SWITCH, "0")
    ref, fus = vb_pair("conv_k3_s1_p1", {}, torch.float64, 2)
    assert_paths_agree(ref, fus, torch.float64)  # the PyTorch blockwise path (fused.LazyCentredVotes)
    assert kernel_calls == [] and fus.last_impl == "fused"


@pytest.mark.usefixtures("broken_compiler")
def test_a_failed_build_warns_once_and_the_pytorch_path_runs(kernel_calls):
    ref, fus = vb_pair("conv_k3_s1_p1", {}, torch.float64, 3)
    with pytest.warns(RuntimeWarning, match="CPU VB kernel could not be built with .*no-such-compiler"):
        assert_paths_agree(ref, fus, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: the second forward is silent
        run(fus, *inputs(torch.float64))
    assert kernel_calls == [] and fus.last_impl == "fused"


@pytest.mark.usefixtures("broken_compiler")
def test_auto_takes_the_kernel_only_where_it_builds_and_serves(monkeypatch):
    monkeypatch.setattr(fused, "MEASURED_FASTER", {("vb", "cpu"): True})
    poses = {16: inputs(torch.float32), 4: (torch.randn(2, 3, 4, 4, 4), torch.rand(2, 3, 4, 4))}
    layers = {d: ConvCaps(3, 4, 3, 1, 1, routing="vb", pose_dim=d) for d in poses}
    paths = []
    for compiler in ("missing", "system"):
        if compiler == "system":
            monkeypatch.delenv("CAPSBENCH_CC")
            build.forget()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the missing compiler's one warning (tested above)
            for d, layer in layers.items():
                layer(Capsules(*poses[d]))
                paths.append((compiler, d, layer.last_impl))
    # measured faster is the kernel's claim: without a built kernel, or for 2x2 poses, the reference runs
    assert paths == [("missing", 16, "reference"), ("missing", 4, "reference"), ("system", 16, "fused"),
                     ("system", 4, "reference")]  # fmt: skip


def test_each_source_builds_its_own_library(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path))
    vb, em = build._build(torch.float64, source=cpu_vb.SOURCE), build._build(torch.float64)
    assert vb.name.startswith("vb_window-") and em.name.startswith("em_window-") and vb.parent == em.parent

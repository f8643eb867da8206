"""Control arms and reference-faithful variants of the routing methods (issue 13).

- ``coefficients="uniform"`` (every method): coefficients frozen at uniform, everything else kept;
- EM: yl-1993's renormalisation of ``R * a`` over parents, SR-CapsNet's initial ``R = 1``, a fixed lambda;
- the registered ``uniform`` routing (its registry-wide properties are in test_routing_properties.py);
- ``diagnostics``: the activation terms EM and VB report never change an output.
"""

from __future__ import annotations

import pytest
import torch

from capsbench.errors import UserError
from capsbench.registry import ROUTINGS


def inputs(n=2, length=3, i=6, j=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(n, length, i, j, d, generator=g, dtype=torch.float64)
    act = 0.1 + 0.9 * torch.rand(n, length, i, generator=g, dtype=torch.float64)
    pose = torch.randn(n, length, i, d, generator=g, dtype=torch.float64)
    return votes, act, pose


def build(name, iterations=3, i=6, j=4, d=16, seed=1, **options):
    torch.manual_seed(seed)
    routing = ROUTINGS.get(name)(children=i, parents=j, pose_dim=d, iterations=iterations, **options).double()
    with torch.no_grad():  # trained-looking parameters (several start at zero)
        for p in routing.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return routing.eval()


def same(a, b, rtol=1e-10, atol=1e-12):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------- uniform control


@pytest.mark.parametrize("name", ["em", "vb", "self", "dynamic"])
def test_uniform_coefficients_control_returns_uniform_coupling(name):
    votes, act, pose = inputs()
    out = build(name, coefficients="uniform")(votes, act, pose)
    torch.testing.assert_close(out.coefficients, torch.full_like(out.coefficients, 0.25))
    routed = build(name)(votes, act, pose)
    assert not torch.allclose(routed.coefficients, out.coefficients)  # the default really routes


@pytest.mark.parametrize("name", ["vb", "dynamic"])
def test_uniform_control_is_one_pass_of_the_method(name):
    """VB and dynamic routing with frozen coefficients = the method with a single iteration."""
    votes, act, pose = inputs()
    control, one_pass = build(name, iterations=3, coefficients="uniform"), build(name, iterations=1)
    same(control(votes, act, pose), one_pass(votes, act, pose))


def test_em_uniform_control_is_the_last_m_step_alone():
    votes, act, pose = inputs()
    control = build("em", iterations=3, coefficients="uniform")
    last_lambda = control.lambdas[-1]
    one_step = build("em", iterations=1, final_lambda=last_lambda, lambda_schedule="fixed")
    same(control(votes, act, pose), one_step(votes, act, pose))


def test_self_routing_uniform_control_keeps_its_activation_rule():
    """a_j = sum_i a_i c_ij / sum_i a_i = 1/J with c = 1/J: the rule kept, the routing gone."""
    votes, act, pose = inputs()
    out = build("self", coefficients="uniform")(votes, act, pose)
    torch.testing.assert_close(out.activation, torch.full_like(out.activation, 0.25))


@pytest.mark.parametrize("name", ["em", "vb", "self", "dynamic"])
def test_bad_coefficients_value_names_the_key(name):
    with pytest.raises(UserError, match=r"model\.routing_options\.coefficients"):
        build(name, coefficients="random")


# --------------------------------------------------------------------------------------------- EM variants


def test_em_renormalise_cancels_child_activations_like_yl1993():
    """yl-1993 divides R * a by its sum over parents: positive activations no longer matter."""
    votes, act, pose = inputs()
    other = act.flip(-1)  # different positive activations
    ported = build("em", renormalise=True)
    same(ported(votes, act, pose), ported(votes, other, pose), rtol=1e-5, atol=1e-6)  # up to its eps (1e-8)
    ours = build("em")
    assert not torch.allclose(ours(votes, act, pose).activation, ours(votes, other, pose).activation)


def test_em_renormalise_still_ignores_a_silent_child():
    votes, act, pose = inputs()
    act[:, :, 0] = 0.0
    moved = votes.clone()
    moved[:, :, 0] += 100.0
    ported = build("em", renormalise=True)
    torch.testing.assert_close(ported(votes, act, pose).pose, ported(moved, act, pose).pose)


def test_em_initial_r_one_is_uniform_r_with_j_times_the_activations():
    """SR-CapsNet's first M-step with R = 1: weights R a = 1 * a = (1/J) * (J a)."""
    votes, act, pose = inputs()
    j = votes.shape[3]
    sr = build("em", iterations=1, initial_coefficients="one")
    ours = build("em", iterations=1)
    out_sr, out_ours = sr(votes, act, pose), ours(votes, act * j, pose)
    torch.testing.assert_close(out_sr.pose, out_ours.pose)
    torch.testing.assert_close(out_sr.activation, out_ours.activation)
    assert not torch.allclose(out_sr.activation, ours(votes, act, pose).activation)


def test_em_fixed_lambda_schedule():
    assert build("em", iterations=3, final_lambda=1e-3, lambda_schedule="fixed").lambdas == [1e-3] * 3
    assert build("em", iterations=3).lambdas == pytest.approx([0.0005, 0.000975, 0.001426], abs=1e-6)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"renormalise": "yes"}, "renormalise"),
        ({"initial_coefficients": "ones"}, "initial_coefficients"),
        ({"lambda_schedule": "linear"}, "lambda_schedule"),
    ],
)
def test_em_bad_variant_values_name_the_key(options, key):
    with pytest.raises(UserError, match=rf"model\.routing_options\.{key}"):
        build("em", **options)


def test_em_variants_build_through_the_spec_and_capsbench_defaults_are_unchanged():
    from capsbench.config import ModelConfig
    from capsbench.models.capsnet import build_capsnet

    options = {"renormalise": True, "initial_coefficients": "one", "lambda_schedule": "fixed", "final_lambda": 1e-3}
    cfg = ModelConfig(
        routing="em", backbone="em_stem", depth=1, primary_types=4, capsule_types=4, routing_options=options
    )
    model = build_capsnet(cfg, num_classes=3, in_channels=1, image_size=(8, 8))
    routing = model.caps["conv1"].routing
    assert routing.renormalise and routing.initial_coefficients == "one" and routing.lambdas[-1] == 1e-3
    default = build("em")
    assert (default.renormalise, default.initial_coefficients, default.coefficients) == (False, "uniform", "routed")


# --------------------------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("name", ["em", "vb"])
def test_diagnostics_report_terms_without_changing_outputs(name):
    votes, act, pose = inputs()
    routing = build(name)
    plain = routing(votes, act, pose)
    assert routing.last_terms is None
    routing.diagnostics = True
    watched = routing(votes, act, pose)
    same(plain, watched)
    terms = routing.last_terms
    j = votes.shape[3]
    assert float(terms["count"]) == votes.shape[0] * votes.shape[1]
    assert terms["mass"].shape == (j,) and terms["cost"].shape == (j,)
    if name == "em":  # margin = beta_a - cost, logit = lambda_t * margin (per-type means are linear)
        torch.testing.assert_close(terms["margin"], terms["beta_a"] - terms["cost"])
        torch.testing.assert_close(terms["logit"], terms["lambda_t"] * terms["margin"])
        assert float(terms["lambda_t"]) == pytest.approx(routing.lambdas[-1])
    else:
        torch.testing.assert_close(terms["logit"], terms["beta_a"] - terms["cost"])


@pytest.mark.parametrize(
    "routing, options, key",
    [("em", {"coefficients": "random"}, "coefficients"), ("em", {"lambda_schedule": "cosine"}, "lambda_schedule"),
     ("vb", {"coefficients": 1}, "coefficients"), ("self", {"coefficients": "none"}, "coefficients"),
     ("dynamic", {"coefficients": "off"}, "coefficients")],
)
def test_bad_option_values_fail_when_the_spec_is_validated(routing, options, key):
    """``capsbench validate`` catches a bad value before any run starts, naming the key."""
    from omegaconf import OmegaConf

    from capsbench import spec
    from capsbench.config import RunConfig

    cfg = OmegaConf.structured(RunConfig)
    cfg.model.routing = routing
    cfg.model.routing_options = options
    with pytest.raises(UserError, match=rf"model\.routing_options\.{key}"):
        spec._check_routing_options(cfg)
    cfg.model.routing_options = {}
    spec._check_routing_options(cfg)  # the defaults pass

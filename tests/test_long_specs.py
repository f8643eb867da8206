"""The long-cpu protocol and its sweeps (docs/long-protocol.md): the pre-registered settings hold,
every arm is what its name says, and the protocol is never ranked with paper or paper-mini.
Spec loading only (no training)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from capsbench import spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
DIGITS_TRAIN = 1797 - 359  # digits without its fixed test set


@functools.cache
def load(rel: str) -> tuple[spec.RunSpec, ...]:
    return tuple(spec.load(SPECS / rel))


def arm(run) -> str:
    return Path(run.point["extends"]).stem


def test_protocol_is_long_enough_to_die_in():
    (run,) = load("protocols/long.yaml")
    c = run.config
    assert (c.protocol, c.protocol_version) == ("long-cpu", "1")
    assert c.data.name == "digits" and c.data.image_size is None and c.metrics.dead_threshold == 0.01
    assert c.metrics.mechanism and c.device == "cpu"
    for name in ("long/screening.yaml", "long/confirmation.yaml", "long/confirmation_arms.yaml"):
        for r in load(name):
            t = r.config.train
            train_images = DIGITS_TRAIN - round(r.config.data.val_size * DIGITS_TRAIN)
            steps = t.epochs * math.ceil(train_images / t.batch_size)
            assert t.epochs >= 20 and steps >= 1000 and t.batch_size == 32, (name, r.point)
            assert r.config.protocol == "long-cpu"


def test_screening_has_every_method_control_and_variant_at_depths_6_and_10():
    runs = load("long/screening.yaml")
    assert {r.config.model.depth for r in runs} == {6, 10} and {r.config.seed for r in runs} == {0}
    by_arm = {arm(r): r.config for r in runs if r.config.model.depth == 6}
    assert {by_arm[m].model.routing for m in ("em", "vb", "self", "dynamic", "uniform")} == {
        "em", "vb", "self", "dynamic", "uniform"
    }
    for method in ("em", "vb", "self", "dynamic"):
        control = by_arm[f"{method}_uniform"]
        assert control.model.routing == method and dict(control.model.routing_options) == {"coefficients": "uniform"}
        assert dict(by_arm[method].model.routing_options) == {}  # capsbench's defaults
    assert dict(by_arm["em_yl1993_renormalise"].model.routing_options) == {"renormalise": True}
    assert dict(by_arm["em_sr_initial_r1"].model.routing_options) == {"initial_coefficients": "one"}
    assert dict(by_arm["em_fixed_lambda"].model.routing_options) == {"final_lambda": 1e-3, "lambda_schedule": "fixed"}
    assert by_arm["em_no_pose_norm"].model.pose_norm is False and by_arm["em"].model.pose_norm is None
    assert dict(by_arm["vb_no_activation_bn"].model.routing_options) == {"activation_bn": False}
    assert len({r.spec_hash for r in runs}) == len(runs)  # every arm is its own experiment


def test_confirmation_grid_and_control_arms():
    grid = load("long/confirmation.yaml")
    assert {(r.config.model.routing, r.config.model.depth, r.config.seed) for r in grid} == {
        (m, d, s) for m in ("em", "vb", "self", "dynamic", "uniform") for d in (1, 3, 6, 10) for s in (0, 1, 2)
    }
    arms = load("long/confirmation_arms.yaml")
    # every control, plus the variants question 5 found to change an answer (added as pre-registered, dated there)
    assert {arm(r) for r in arms} == {"em_uniform", "vb_uniform", "self_uniform", "dynamic_uniform", "em_no_pose_norm"}
    assert {r.config.model.depth for r in arms} == {6, 10} and {r.config.seed for r in arms} == {0, 1, 2}
    screened = {(r.spec_hash, r.config.seed) for r in load("long/screening.yaml")}
    assert {(r.spec_hash, r.config.seed) for r in grid if r.config.model.depth in (6, 10) and r.config.seed == 0} <= (
        screened
    )  # the screening's default-arm runs are reused by the confirmation, not run twice

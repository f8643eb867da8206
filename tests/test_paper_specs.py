"""The paper's protocol as specs: values the paper states, one command per figure, and a mini protocol
that is never ranked with it. Spec loading only (no training)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from capsbench import spec

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
DATASETS = ["mnist", "fashion_mnist", "cifar10", "smallnorb", "imagewoof"]
PAPER_METHODS = {"em", "vb", "self"}


@functools.cache
def load(rel: str) -> tuple[spec.RunSpec, ...]:
    return tuple(spec.load(SPECS / rel))  # cached: the paper's sweeps are 150 runs each


def test_paper_protocol_states_the_papers_values():
    (run,) = load("protocols/paper.yaml")
    c = run.config
    assert (c.protocol, c.protocol_version) == ("paper", "1")
    assert c.train.epochs == 50 and c.metrics.dead_threshold == 0.01
    assert c.model.capsule_types == 16 and c.model.checkpointing and not c.model.residual
    assert c.data.normalize and c.data.subset is None and c.data.val_size > 0  # validation monitoring


@pytest.mark.parametrize(
    ("routing", "backbone", "optimizer", "lr", "batch", "loss"),
    [
        ("em", "em_stem", "adam", 3e-3, 128, "spread"),
        ("vb", "vb_stem", "adam", 1e-3, 128, "cross_entropy"),
        ("self", "sr_convnet", "sgd", 0.1, 64, "nll"),
        ("dynamic", "sr_convnet", "sgd", 0.1, 64, "margin"),
    ],
)
def test_method_presets_follow_the_reference_implementations(routing, backbone, optimizer, lr, batch, loss):
    (run,) = load(f"protocols/methods/{routing}.yaml")
    c = run.config
    assert (c.model.routing, c.model.backbone, c.train.optimizer.name) == (routing, backbone, optimizer)
    assert c.train.optimizer.lr == pytest.approx(lr) and c.train.batch_size == batch and c.train.loss == loss


@pytest.mark.parametrize("routing", ["em", "vb", "self", "dynamic"])
def test_depth_sweeps_cover_the_papers_grid(routing):
    runs = load(f"{routing}_depth_sweep.yaml")
    assert len(runs) == 5 * 10 * 3
    assert {r.config.model.routing for r in runs} == {routing}
    assert {r.config.data.name for r in runs} == set(DATASETS)
    assert {r.config.model.depth for r in runs} == set(range(1, 11)) and {r.seed for r in runs} == {0, 1, 2}
    assert all(r.config.train.epochs == 50 and r.config.protocol == "paper" for r in runs)


@functools.cache
def _depth_sweep_labels() -> frozenset[str]:
    return frozenset(r.label for m in ("em", "vb", "self", "dynamic") for r in load(f"{m}_depth_sweep.yaml"))


@pytest.mark.parametrize(("figure", "dataset"), list(zip(range(1, 6), DATASETS)))
def test_figures_1_to_5_are_one_sweep_each_over_the_papers_three_methods(figure, dataset):
    runs = load(f"paper/figure{figure}.yaml")
    assert {r.config.model.routing for r in runs} == PAPER_METHODS
    assert {r.config.data.name for r in runs} == {dataset}
    assert {r.config.model.depth for r in runs} == set(range(1, 11))
    shared = _depth_sweep_labels()
    # same sweep folder and labels as the per-method sweeps: a finished run is never trained twice
    assert {str(r.config.name) for r in runs} == {"paper_depth_sweep"}
    own = [r for r in runs if r.label not in shared]
    if dataset == "cifar10":  # SR-CapsNet's CIFAR backbone: the only runs the depth sweeps do not have
        assert {(r.config.model.routing, r.config.model.backbone) for r in own} == {("self", "resnet20")}
    else:
        assert own == []


@pytest.mark.parametrize(("figure", "dataset", "depth"), [(6, "imagewoof", 10), (7, "mnist", 3)])
def test_figures_6_and_7_are_the_papers_single_em_runs(figure, dataset, depth):
    (run,) = load(f"paper/figure{figure}.yaml")
    assert (run.config.model.routing, run.config.data.name, run.config.model.depth) == ("em", dataset, depth)
    assert run.label in _depth_sweep_labels()


def test_mini_protocol_is_its_own_protocol_and_keeps_the_methods_settings():
    runs = load("mini/depth_sweep.yaml")
    assert {r.config.protocol for r in runs} == {"paper-mini"}  # never ranked with "paper"
    assert {r.config.model.routing for r in runs} == PAPER_METHODS | {"dynamic"}
    assert {r.config.data.name for r in runs} == {"mnist", "fashion_mnist"}
    assert {1, 2, 4, 6, 8, 10} <= {r.config.model.depth for r in runs}
    backbones = {r.config.model.routing: r.config.model.backbone for r in runs}
    assert backbones == {"em": "em_stem", "vb": "vb_stem", "self": "sr_convnet", "dynamic": "sr_convnet"}
    assert all(r.config.metrics.dead_threshold == 0.01 and r.config.model.capsule_types == 16 for r in runs)
    paper_hashes = {r.spec_hash for m in ("em", "vb", "self", "dynamic") for r in load(f"{m}_depth_sweep.yaml")}
    assert not paper_hashes & {r.spec_hash for r in runs}

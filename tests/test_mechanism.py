"""Mechanism telemetry (capsbench/metrics/mechanism.py): crafted layers, a real model, a real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from capsbench.capsules.types import Capsules
from capsbench.config import ModelConfig, RunConfig
from capsbench.metrics.mechanism import MechanismTelemetry
from capsbench.models.capsnet import build_capsnet
from capsbench.spec import spec_hash


class Crafted(nn.Module):
    """A capsule layer that outputs given activations and poses and keeps given coefficients."""

    kind = "conv"

    def __init__(self):
        super().__init__()
        self.name = "conv1"
        self.last_coefficients = None

    def forward(self, batch):
        act, pose, coefficients = batch
        self.last_coefficients = coefficients
        return Capsules(pose, act)


class CraftedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.capsule_layers = nn.ModuleList([Crafted()])

    def forward(self, batch):
        return self.capsule_layers[0](batch)


def crafted_batches(split=(3, 5), seed=0):
    """Activations [N, T=4, 3, 3], poses [N, 4, 2, 3, 3], coefficients [N, L=9, I=5, J=4]."""
    g = torch.Generator().manual_seed(seed)
    n = sum(split)
    act = torch.rand(n, 4, 3, 3, generator=g)
    act[:, 0, 0, 0] = 0.0  # a dead unit: type 0 at position (0, 0)
    act[:, 1] *= 0.005  # a dead type: every unit of type 1
    pose = torch.randn(n, 4, 2, 3, 3, generator=g)
    coefficients = torch.softmax(torch.randn(n, 9, 5, 4, generator=g) * 2, dim=-1)
    chunks = [torch.split(t, list(split)) for t in (act, pose, coefficients)]
    return (act, pose, coefficients), list(zip(*chunks, strict=True))


def summary_of(batches, threshold=0.01):
    net = CraftedNet()
    with MechanismTelemetry(net, threshold) as mech:
        for batch in batches:
            net(batch)
    return mech.summary()["conv1"]


def test_crafted_layer_statistics_match_direct_computation():
    (act, pose, c), batches = crafted_batches(split=(300, 500))  # 28,800 values: percentile definitions agree
    s = summary_of(batches)
    values = act.double().flatten().numpy()
    for q, got in s["activation_percentiles"].items():
        assert got == pytest.approx(np.percentile(values, int(q[1:])), abs=2e-3), q
    assert s["activation_at_most_threshold"] == pytest.approx(float((act <= 0.01).double().mean()))
    unit_means = act.double().mean(0)
    assert s["dead_unit_fraction"] == pytest.approx(float((unit_means <= 0.01).double().mean()))
    assert s["dead_unit_fraction"] == pytest.approx((9 + 1) / 36)  # type 1 everywhere + one unit of type 0
    norms = torch.linalg.vector_norm(pose.double(), dim=2)
    assert s["pose_norm"]["mean"] == pytest.approx(float(norms.mean()))
    assert s["pose_norm"]["std"] == pytest.approx(float(norms.std(unbiased=False)), rel=1e-6)
    p = c.double()
    entropy = -(p * p.log()).sum(-1) / math.log(4)
    assert s["coefficient_entropy"] == pytest.approx(float(entropy.mean()))
    cv = p.std(0, unbiased=False).mean() / p.mean()
    assert s["coefficient_cv_images"] == pytest.approx(float(cv))
    assert s["terms"] is None  # no routing here


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix: tree}


def test_summary_does_not_depend_on_how_images_are_batched():
    _, one = crafted_batches(split=(8,))
    _, three = crafted_batches(split=(2, 5, 1))
    a, b = flat(summary_of(one)), flat(summary_of(three))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key


def test_uniform_and_one_hot_coupling_and_input_independence():
    n = 4
    act, pose = torch.rand(n, 4, 3, 3), torch.randn(n, 4, 2, 3, 3)
    uniform = torch.full((n, 9, 5, 4), 0.25)
    s = summary_of([(act, pose, uniform)])
    assert s["coefficient_entropy"] == pytest.approx(1.0) and s["coefficient_cv_images"] == pytest.approx(0.0)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 4, (n, 9, 5)), 4).float()
    s = summary_of([(act, pose, one_hot)])
    assert s["coefficient_entropy"] == pytest.approx(0.0, abs=1e-6) and s["coefficient_cv_images"] > 0


# --------------------------------------------------------------------------------------------- a real model


def tiny_model(routing="em", **routing_options):
    torch.manual_seed(0)
    cfg = ModelConfig(
        routing=routing, backbone="tiny", depth=2, primary_types=4, capsule_types=4, iterations=2,
        routing_options=routing_options,
    )  # fmt: skip
    return build_capsnet(cfg, num_classes=3, in_channels=1, image_size=(8, 8)).eval()


@pytest.mark.parametrize("routing", ["em", "vb"])
@torch.no_grad()
def test_real_model_terms_and_unchanged_outputs(routing):
    model = tiny_model(routing)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = model(x)
    with MechanismTelemetry(model) as mech:
        watched = model(x)
    torch.testing.assert_close(plain, watched, rtol=0, atol=0)
    summary = mech.summary()
    assert list(summary) == ["primary", "conv1", "conv2", "class"]
    assert summary["primary"]["coefficient_entropy"] is None and summary["primary"]["terms"] is None
    for name in ("conv1", "conv2", "class"):
        terms = summary[name]["terms"]
        assert len(terms["cost"]) == len(terms["mass"]) == (3 if name == "class" else 4)
        assert 0 <= summary[name]["coefficient_entropy"] <= 1 + 1e-9
    assert all(not layer.routing.diagnostics for layer in model.caps.values() if hasattr(layer, "routing"))


@torch.no_grad()
def test_uniform_control_shows_as_uniform_input_independent_coupling():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for options, entropy_is_one in (({"coefficients": "uniform"}, True), ({}, False)):
        model = tiny_model("self", **options)
        with torch.no_grad():  # trained-looking routing parameters (they start at zero)
            for name, p in model.named_parameters():
                if name.endswith(("W2", "b2")):
                    p.add_(torch.randn_like(p))
        with MechanismTelemetry(model) as mech:
            model(x)
        conv = mech.summary()["conv2"]
        assert (conv["coefficient_entropy"] == pytest.approx(1.0)) == entropy_is_one
        assert (conv["coefficient_cv_images"] == pytest.approx(0.0, abs=1e-9)) == entropy_is_one


# --------------------------------------------------------------------------------------------- a real run


def test_mechanism_is_not_part_of_the_spec_hash():
    on = OmegaConf.structured(RunConfig)
    off = OmegaConf.structured(RunConfig)
    off.metrics.mechanism = False
    assert spec_hash(on) == spec_hash(off)


def test_run_writes_mechanism_per_epoch_and_in_a_valid_record(tmp_path, monkeypatch):
    from capsbench.results.run_record import check_run_record
    from capsbench.train.runner import run

    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    cfg = OmegaConf.structured(RunConfig)
    cfg.name, cfg.device = "mech", "cpu"
    cfg.model.update(routing="em", backbone="tiny", depth=1, capsule_types=4, primary_types=4, iterations=2)
    cfg.data.update(name="digits", subset=100, test_subset=40)
    cfg.train.update(epochs=2, batch_size=32, eval_batch_size=64, max_steps_per_epoch=2)
    cfg.output.quiet = True
    record = run(cfg, tmp_path / "run", spec_hash="h", progress=False)
    assert record["status"] == "ok"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(line["mechanism"]) for line in lines] == [sorted(["primary", "conv1", "class"])] * 2
    assert record["metrics"]["mechanism"] == lines[-1]["mechanism"]
    assert record["metrics"]["mechanism"]["conv1"]["terms"]["lambda_t"] > 0
    check_run_record(record)

    from capsbench.report.mechanism import mechanism_data
    from capsbench.report.rundir import RunDir
    from capsbench.report.write import write_report

    data = mechanism_data(RunDir(tmp_path / "run"))
    assert data["epochs"] == [1, 2] and data["layers"] == ["primary", "conv1", "class"]
    assert data["series"]["coefficient_entropy"]["primary"] == [None, None]
    assert all(0 <= v <= 1 for v in data["series"]["p50"]["conv1"])
    from capsbench.report.mechanism import terms_data

    terms = terms_data(RunDir(tmp_path / "run"))
    assert terms["terms"][:2] == ["logit", "margin"] and {"cost", "mass", "beta_a"} <= set(terms["terms"])
    assert terms["layers"] == ["conv1", "class"]  # the primary capsules have no routing
    mean, low, high = terms["series"]["mass"]["conv1"][-1][1]
    assert low <= mean <= high
    written = write_report([tmp_path / "run"], tmp_path / "report")
    assert tmp_path / "report" / "runs" / "run" / "mechanism.png" in written
    assert tmp_path / "report" / "runs" / "run" / "terms.png" in written

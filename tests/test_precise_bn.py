"""``train.precise_bn``: running BatchNorm statistics recomputed with the current weights before evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from capsbench import spec
from capsbench.capsules.routing.vb import NonAffineBatchNorm
from capsbench.train.precise_bn import batchnorms, recompute_bn_statistics
from tests.test_executors import QUICKSTART, TINY


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.vb_bn = NonAffineBatchNorm(3)

    def forward(self, x):
        h = self.bn(self.conv(x))
        return self.vb_bn(h.flatten(2), channel_dim=1)


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g) * 3 + 1, torch.zeros(n, dtype=torch.long))


def test_running_statistics_become_the_mean_of_the_batch_statistics():
    torch.manual_seed(0)
    net, ds = Net(), data()
    for m in batchnorms(net):  # stale statistics, as after fast-moving training
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
    used = recompute_bn_statistics(net, ds, images=30, batch_size=10, device=torch.device("cpu"))
    assert used == 3
    x = ds.tensors[0][:30]
    with torch.no_grad():
        h = net.conv(x)
        per_batch = [h[i : i + 10] for i in (0, 10, 20)]
        mean = torch.stack([b.mean((0, 2, 3)) for b in per_batch]).mean(0)
        var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in per_batch]).mean(0)
    torch.testing.assert_close(net.bn.running_mean, mean)
    torch.testing.assert_close(net.bn.running_var, var)
    assert not torch.allclose(net.vb_bn.running_mean, torch.full((3,), 5.0))  # VB's own BN too
    assert net.bn.momentum == 0.1 and net.vb_bn.momentum == 0.1 and net.training  # restored


def test_eval_matches_batch_statistics_after_recompute_on_the_same_batch():
    torch.manual_seed(1)
    net, ds = Net(), data(n=64)
    x = ds.tensors[0]
    with torch.no_grad():
        train_out = net.train()(x)
        for m in batchnorms(net):
            m.running_mean.fill_(3.0)
        stale = net.eval()(x)
        recompute_bn_statistics(net, ds, images=64, batch_size=64, device=torch.device("cpu"))
        fresh = net.eval()(x)
    assert not net.training  # the caller's mode is kept
    assert (stale - train_out).abs().max() > 0.5
    torch.testing.assert_close(fresh, train_out, atol=0.05, rtol=0.05)  # unbiased vs biased variance only


def test_off_by_default_and_hash_neutral_at_zero(tmp_path):
    (plain,) = spec.load(QUICKSTART, ["model.depth=1"])
    (zero,) = spec.load(QUICKSTART, ["model.depth=1", "train.precise_bn=0"])
    (on,) = spec.load(QUICKSTART, ["model.depth=1", "train.precise_bn=64"])
    assert plain.config.train.precise_bn == 0
    assert plain.spec_hash == zero.spec_hash != on.spec_hash  # old records keep their key


def test_a_run_with_precise_bn_evaluates_with_recomputed_statistics(tmp_path):
    from capsbench.train.runner import run

    two = [*TINY, "train.epochs=2"]  # a recompute between the epochs must not change the training
    (off,) = spec.load(QUICKSTART, two)
    (on,) = spec.load(QUICKSTART, [*two, "train.precise_bn=64"])
    a = run(off.config, tmp_path / "off", spec_hash=off.spec_hash, progress=False)
    b = run(on.config, tmp_path / "on", spec_hash=on.spec_hash, progress=False)
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"]["train_loss"] == b["metrics"]["train_loss"]  # training itself is untouched
    assert a["metrics"]["val_loss"] != b["metrics"]["val_loss"]  # evaluation sees other statistics

"""Mean capsule length per layer of dynamic routing at initialisation, with the default and the length-preserving init.

    OMP_NUM_THREADS=1 python benchmarks/init_lengths.py [--depth 10] [--iterations 3]

One forward of 16 standard-normal images in training mode (BatchNorm on batch statistics, as the long-cpu
protocol's precise-BN evaluation sees the network), seed 0, the long-cpu model (SR-CapsNet ConvNet, 16 types
of pose 16) at 8x8 (digits: a 1x1 capsule grid) and 32x32 (a 4x4 grid). The activation of dynamic routing is
the capsule length, so the mean activation is the mean length. Prints one Markdown row per (size, init), then
the ratio of the loss-gradient norm reaching conv1's input to that reaching the class capsules' input
(``rho``, docs/remedies.md criterion C) with the length-preserving init at 8x8, for gradients through the
agreement updates (dynamic's default), with them detached (``detach_agreement``) and with one iteration.
"""

from __future__ import annotations

import argparse

import torch

from capsbench.config import ModelConfig
from capsbench.metrics.grad_norms import input_gradient_ratio
from capsbench.models.capsnet import build_capsnet


def mean_lengths(image: int, init: str, depth: int, iterations: int) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = ModelConfig(routing="dynamic", backbone="sr_convnet", depth=depth, primary_types=16, iterations=iterations,
                      init=init)
    model = build_capsnet(cfg, num_classes=10, in_channels=1, image_size=(image, image)).train()
    seen: dict[str, float] = {}
    for name, layer in model.caps.items():
        layer.register_forward_hook(lambda m, a, out, n=name: seen.__setitem__(n, float(out.activation.mean())))
    with torch.no_grad():
        model(torch.randn(16, 1, image, image))
    return seen


def ratio_at_init(depth: int, iterations: int, detach: bool) -> float:
    """``|dL/d input of conv1| / |dL/d input of the class capsules|`` at init (length init, 8x8, seed 0)."""
    torch.manual_seed(0)
    cfg = ModelConfig(routing="dynamic", backbone="sr_convnet", depth=depth, primary_types=16, iterations=iterations,
                      init="length", routing_options={"detach_agreement": detach})
    model = build_capsnet(cfg, num_classes=10, in_channels=1, image_size=(8, 8)).train()
    return input_gradient_ratio(model, torch.randn(8, 1, 8, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    rows = {(image, init): mean_lengths(image, init, args.depth, args.iterations)
            for image in (8, 32) for init in ("default", "length")}
    names = list(next(iter(rows.values())))
    print("| input | init | " + " | ".join(names) + " |")
    print("|---|---|" + "--:|" * len(names))
    for (image, init), lengths in rows.items():
        print(f"| {image}x{image} | {init} | " + " | ".join(f"{lengths[n]:.3g}" for n in names) + " |")
    print()
    print("| depth | gradient through agreement (3 iterations) | detached agreement (3 iterations) | 1 iteration |")
    print("|--:|--:|--:|--:|")
    for depth in (8, 20):
        ratios = [ratio_at_init(depth, it, det) for it, det in ((3, False), (3, True), (1, False))]
        print(f"| {depth} | " + " | ".join(f"{r:.3g}" for r in ratios) + " |")


if __name__ == "__main__":
    main()

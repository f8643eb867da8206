"""Baselines registered through the same entry-point plugin path an outside package uses.

``pyproject.toml`` declares ``[project.entry-points."capsbench.plugins"] baselines =
"baselines:register"``; capsbench calls :func:`register` the first time a registry is read.
Nothing in ``capsbench/`` names these models: without the entry point they do not exist.

Models (builders take ``(cfg: ModelConfig, num_classes, in_channels, image_size)`` and
return logits; ``model.depth`` is the number of blocks in every family):

- ``timm_resnet``: CIFAR-style ResNet of timm ``BasicBlock`` s, ``depth`` blocks over three
  stages (see :mod:`baselines.resnet`);
- ``timm_vit``: timm ``VisionTransformer`` with ``depth`` transformer blocks (see
  :mod:`baselines.vit`).

Residual capsule networks are the built-in ``capsnet`` with ``model.residual: true``
(``specs/residual_*_depth_sweep.yaml``).

Registration is lazy (``"module:attr"`` strings): listing models or validating a spec does
not import torch or timm.
"""

MODELS_TARGETS = {
    "timm_resnet": "baselines.resnet:build_timm_resnet",
    "timm_vit": "baselines.vit:build_timm_vit",
}


def register() -> None:
    """Entry point of the ``capsbench.plugins`` group: registers the baseline models.

    Safe to call again: names this plugin already registered are left as they are.
    """
    from capsbench.registry import MODELS

    for name, target in MODELS_TARGETS.items():
        if name in MODELS and MODELS.source(name) == "baselines":
            continue
        MODELS.register(name, target)

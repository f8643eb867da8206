"""The model and the loss a run's config describes, sized for its data.

One place for the runner, ``capsbench bench`` and the benchmarks under ``benchmarks/``, so that what they time
or evaluate is built exactly as a run builds it (arch checked against the registry, the model's reference loss
unless ``train.loss`` names one, loss options as a plain dict)::

    data = build_data(cfg.data)
    model = build_model(cfg, data, torch.device("cpu"))
    loss_name, loss_fn = build_run_loss(cfg, model)
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from capsbench.errors import UserError
from capsbench.registry import MODELS
from capsbench.train.losses import build_loss


def build_model(cfg, data, device: torch.device | str = "cpu") -> nn.Module:
    """``cfg.model`` for ``data``'s classes, channels and image size, on ``device`` (initialised by the current RNG)."""
    MODELS.check(cfg.model.arch, "model.arch")
    model = MODELS.get(cfg.model.arch)(
        cfg.model, num_classes=data.num_classes, in_channels=data.in_channels, image_size=tuple(data.image_size)
    )
    return model.to(device)


def build_run_loss(cfg, model: nn.Module) -> tuple[str, nn.Module]:
    """``train.loss`` (else the model's reference loss) with ``train.loss_options``: its name and the module."""
    name = cfg.train.loss or getattr(model, "reference_loss", None)
    if not name:
        raise UserError(f"train.loss: model '{cfg.model.arch}' declares no reference loss; set train.loss")
    options = cfg.train.loss_options
    return name, build_loss(name, OmegaConf.to_container(options) if isinstance(options, DictConfig) else options)

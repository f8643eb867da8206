"""Models: backbones (per original implementation) and the capsule network builder.

Both register lazily (``capsbench.registry.MODELS``, ``BACKBONES``); build through the registry::

    from capsbench.registry import MODELS, build
    model = build(MODELS, "capsnet", cfg.model, num_classes=10, in_channels=1, image_size=(32, 32))
"""

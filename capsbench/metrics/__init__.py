"""Telemetry that observes a model from outside, through hooks.

- ``Accuracy``: top-1 accuracy and mean loss, accumulated on the device.
- ``CapsuleActivations``: eq. 12 (mean activation per capsule type over an
  eval epoch) and eq. 13 (dead if that mean is <= a threshold).
- ``GradNorms``: per capsule layer, the norm of the weight gradients and of the
  gradient reaching the layer's inputs (the vanishing gradient, measured).

The model never returns anything special for them: capsule layers are found
with :func:`capsbench.metrics.layers.capsule_layers`.
"""

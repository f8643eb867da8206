"""The run config schema: typed dataclasses with defaults, loaded by OmegaConf.

Every key a spec may set is declared here; anything else is an error. A field's range or
choices are declared with it (``ranged``: bounds, choices, a pattern) and checked once, when
the spec is loaded (``capsbench.spec``); the code that uses a value relies on that check. Fields
listed in ``NON_RESULT_KEYS`` do not change results and are left out of the spec hash.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

RANGE = "range"  # field metadata key: keyword arguments of capsbench.options.Option (gt, ge, choices, ...)


def ranged(default: Any = MISSING, **declared: Any) -> Any:
    """A field whose value is also bounded: ``depth: int = ranged(1, ge=0)``.

    ``declared`` are ``capsbench.options.Option`` keywords (``gt``, ``ge``, ``lt``, ``le``,
    ``choices``, ``pattern``, ``describe``); the type and nullability come from the annotation.
    """
    return field(default=default, metadata={RANGE: declared})


def plain(value: Any) -> dict[str, Any]:
    """A plain dict from a dict, an OmegaConf DictConfig (resolved) or None: for option mappings."""
    if value is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


# Coordinate addition in shared class capsules (``model.coord_add``): the position of each child
# added to its votes. "hinton": ((row + 0.5) / H, (col + 0.5) / W), the centre of the position, on the
# first two entries of the right-hand column of a 4x4 pose (entries 3 and 7; Hinton et al. 2018);
# "yl1993": (row / H, col / W) on entries 0 and 1 (the yl-1993 EM port); "none": nothing added.
COORD_ADD_STYLES = ("hinton", "yl1993", "none")

# How routed layers hand votes to the routing (model.routing_impl): "reference" materialises them for
# ``Routing.forward`` (the oracle), "fused" calls ``Routing.forward_lazy``, "auto" takes fused where
# the routing has it and it is measured faster on the device.
ROUTING_IMPLS = ("auto", "reference", "fused")


@dataclass
class ModelConfig:
    arch: str = "capsnet"  # MODELS registry
    routing: str = "self"  # ROUTINGS registry (capsule models only)
    backbone: str = "sr_convnet"  # BACKBONES registry
    depth: int = ranged(1, ge=0)  # extra ConvCaps layers (k3 s1 p1) between primary and class capsules
    capsule_types: int = ranged(16, ge=1)  # types in every stacked ConvCaps layer
    primary_types: int = ranged(16, ge=1)  # types of the primary capsules
    pose_dim: int = ranged(16, ge=1)  # 16 = a 4x4 pose matrix
    iterations: int = ranged(3, ge=1)  # routing iterations
    pose_norm: bool | None = None  # BatchNorm on poses after stacked layers; None = per-method reference
    # what model.pose_norm puts on the poses: "batch" (the references' BatchNorm) or "layer" (Tsai et al.
    # 2020's LayerNorm over each capsule's pose); remedies, capsbench/models/remedies.py
    pose_norm_kind: str = ranged("batch", choices=("batch", "layer"))
    residual: bool = False  # skip from the layer two back when shapes match
    # "post": res-capsnet's skips of routed outputs; "pre": pre-activation (identity stream, norm before routing)
    residual_style: str = ranged("post", choices=("post", "pre"))
    # transformation-weight init: "default" (1/sqrt(fan_in) or the routing's) | "length" (squash fixed point)
    init: str = ranged("default", choices=("default", "length"))
    checkpointing: bool = False  # activation checkpointing per capsule layer
    # gamma of MoCapsNet's reversible momentum residual blocks over conv2..convN (capsbench/models/momentum.py);
    # null = off (plain stacking)
    momentum_residual: float | None = ranged(None, gt=0, lt=1)
    coord_add: str = ranged("hinton", choices=COORD_ADD_STYLES)  # coordinate addition of shared class capsules
    # how routed layers hand votes to the routing: auto | reference (materialised, the oracle) | fused
    # (computed per block of windows, never stored); not in the spec hash, recorded like the device
    routing_impl: str = ranged("auto", choices=ROUTING_IMPLS)
    routing_options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the routing
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the model builder


@dataclass
class DataConfig:
    name: str = "digits"  # DATASETS registry
    root: str | None = None  # None = $CAPSBENCH_DATA, else ~/.cache/capsbench/data
    download: bool = False
    image_size: int | None = ranged(None, ge=4)  # None = the data set's own size
    subset: int | None = ranged(None, ge=1)  # training images kept (stratified, deterministic); None = all
    # validation split carved from training: a fraction (<1) or a count (>=1)
    val_size: float = ranged(0.1, ge=0, describe="a fraction in [0, 1) or a count >= 1")
    test_subset: int | None = ranged(None, ge=1)  # test images kept (stratified, deterministic); None = all
    normalize: bool = True  # training-set mean and std, computed once and cached
    num_workers: int = ranged(0, ge=0)
    split_seed: int = 0  # seeds subset and validation split, independent of the run seed
    options: dict[str, Any] = field(default_factory=dict)  # data-set specific options


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # OPTIMIZERS registry
    lr: float = ranged(0.1, gt=0)
    momentum: float = ranged(0.9, ge=0)
    weight_decay: float = ranged(1e-4, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = ranged(1e-8, gt=0)


@dataclass
class SchedulerConfig:
    name: str = "none"  # SCHEDULERS registry
    step_size: int = ranged(1, ge=1)  # epochs between steps ("step")
    gamma: float = ranged(0.1, gt=0)  # decay factor ("step", "exponential")
    min_lr: float = ranged(0.0, ge=0)  # floor ("cosine")


@dataclass
class TrainConfig:
    epochs: int = ranged(10, ge=1)
    batch_size: int = ranged(64, ge=1)
    eval_batch_size: int = ranged(256, ge=1)
    loss: str | None = None  # LOSSES registry; None = the routing method's reference loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    amp: str = ranged("off", choices=("off", "bf16", "fp16"))  # off | bf16 | fp16
    compile: bool = False
    grad_clip: float | None = ranged(None, gt=0)  # max global grad norm; None = off
    test_every_epoch: bool = False
    max_steps_per_epoch: int | None = ranged(None, ge=1)  # cap for smoke tests; None = whole epoch
    # recompute BatchNorm statistics from this many training images before each evaluation (0 = off)
    precise_bn: int = ranged(0, ge=0)


@dataclass
class MetricsConfig:
    dead_threshold: float = ranged(0.01, ge=0, le=1)  # eq. 13: dead if mean activation <= this
    grad_norm_every: int = ranged(50, ge=1)  # steps between per-layer gradient-norm samples
    # per-layer activation percentiles, dead units, pose norms, coupling entropy, activation terms on
    # validation batches (capsbench/metrics/mechanism.py); observes only, so not in the spec hash
    mechanism: bool = True


@dataclass
class OutputConfig:
    dir: str = "runs"
    progress: bool = True
    quiet: bool = False
    tensorboard: bool = False


@dataclass
class ExecutorConfig:
    name: str = ranged("local", choices=("local", "slurm"))
    jobs: int = ranged(1, ge=1)
    partition: str | None = None
    time_min: int = ranged(240, ge=1)  # minutes
    gpus: int = ranged(1, ge=0)
    cpus: int = ranged(4, ge=1)
    mem_gb: int = ranged(16, ge=0, describe="an integer >= 0 (0: the partition's default)")
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "unnamed"
    description: str = ""
    protocol: str = "custom"  # protocol name; ranked only against the same protocol
    protocol_version: str = "0"  # MAJOR version of the protocol
    seed: int = 0
    device: str = ranged("auto", pattern=r"auto|cpu|cuda|cuda:\d+|mps", describe="auto, cpu, cuda, cuda:N or mps")
    deterministic: bool = True
    numerics: str = ranged("native", choices=("native", "portable"))  # portable: same bits on any x86 CPU
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


# Keys added after records existed, with the value that reproduces the earlier behaviour: at that
# value they are left out of the spec hash, so adding a feature never re-keys the leaderboard.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "train.precise_bn": 0,
    "model.coord_add": "hinton",
    "numerics": "native",
    "model.momentum_residual": None,
    # remedies (capsbench/models/remedies.py), at their off values
    "model.pose_norm_kind": "batch",
    "model.residual_style": "post",
    "model.init": "default",
}


def drop_hash_neutral_defaults(data: dict) -> dict:
    """Remove, in place, every ``HASH_NEUTRAL_DEFAULTS`` key of a plain config mapping that holds its neutral value.

    The spec hash and a leaderboard record's variant both use it, so a config written before a
    key existed and one that spells out its neutral value name the same experiment.
    """
    for dotted, neutral in HASH_NEUTRAL_DEFAULTS.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and last in node and node[last] == neutral:
            del node[last]
    return data

# Keys (dotted) that do not change results: left out of the spec hash.
NON_RESULT_KEYS = (
    "name",
    "description",
    "seed",  # the hash names the experiment; records are keyed by (spec_hash, seed)
    "device",
    "model.routing_impl",  # an implementation of the same maths; records state it like the device
    "output",
    "executor",
    "data.root",
    "data.download",
    "data.num_workers",
    "train.eval_batch_size",
    "train.test_every_epoch",
    "metrics.mechanism",
)

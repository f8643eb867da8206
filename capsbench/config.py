"""The run config schema: typed dataclasses with defaults, loaded by OmegaConf.

Every key a spec may set is declared here; anything else is an error. Fields
listed in ``NON_RESULT_KEYS`` do not change results and are left out of the
spec hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def plain(value: Any) -> dict[str, Any]:
    """A plain dict from a dict, an OmegaConf DictConfig (resolved) or None: for option mappings."""
    if value is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


@dataclass
class ModelConfig:
    arch: str = "capsnet"  # MODELS registry
    routing: str = "self"  # ROUTINGS registry (capsule models only)
    backbone: str = "sr_convnet"  # BACKBONES registry
    depth: int = 1  # extra ConvCaps layers (k3 s1 p1) between primary and class capsules
    capsule_types: int = 16  # types in every stacked ConvCaps layer
    primary_types: int = 16  # types of the primary capsules
    pose_dim: int = 16  # 16 = a 4x4 pose matrix
    iterations: int = 3  # routing iterations
    pose_norm: bool | None = None  # BatchNorm on poses after stacked layers; None = per-method reference
    residual: bool = False  # skip from the layer two back when shapes match
    checkpointing: bool = False  # activation checkpointing per capsule layer
    routing_options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the routing
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the model builder


@dataclass
class DataConfig:
    name: str = "digits"  # DATASETS registry
    root: str | None = None  # None = $CAPSBENCH_DATA, else ~/.cache/capsbench/data
    download: bool = False
    image_size: int | None = None  # None = the data set's own size
    subset: int | None = None  # training images kept (stratified, deterministic); None = all
    val_size: float = 0.1  # validation split carved from training: a fraction (<1) or a count (>=1)
    test_subset: int | None = None  # test images kept (stratified, deterministic); None = all
    normalize: bool = True  # training-set mean and std, computed once and cached
    num_workers: int = 0
    split_seed: int = 0  # seeds subset and validation split, independent of the run seed
    options: dict[str, Any] = field(default_factory=dict)  # data-set specific options


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # OPTIMIZERS registry
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    name: str = "none"  # SCHEDULERS registry
    step_size: int = 1  # epochs between steps ("step")
    gamma: float = 0.1  # decay factor ("step", "exponential")
    min_lr: float = 0.0  # floor ("cosine")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    loss: str | None = None  # LOSSES registry; None = the routing method's reference loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    amp: str = "off"  # off | bf16 | fp16
    compile: bool = False
    grad_clip: float | None = None  # max global grad norm; None = off
    test_every_epoch: bool = False
    max_steps_per_epoch: int | None = None  # cap for smoke tests; None = whole epoch
    precise_bn: int = 0  # recompute BatchNorm statistics from this many training images before each evaluation


@dataclass
class MetricsConfig:
    dead_threshold: float = 0.01  # eq. 13: dead if mean activation <= this
    grad_norm_every: int = 50  # steps between per-layer gradient-norm samples


@dataclass
class OutputConfig:
    dir: str = "runs"
    progress: bool = True
    quiet: bool = False
    tensorboard: bool = False


@dataclass
class ExecutorConfig:
    name: str = "local"  # local | slurm
    jobs: int = 1
    partition: str | None = None
    time_min: int = 240
    gpus: int = 1
    cpus: int = 4
    mem_gb: int = 16
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "unnamed"
    description: str = ""
    protocol: str = "custom"  # protocol name; ranked only against the same protocol
    protocol_version: str = "0"  # MAJOR version of the protocol
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    numerics: str = "native"  # native | portable: the same bits on every x86 CPU (capsbench/numerics.py)
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
    "numerics": "native",
}

# Keys (dotted) that do not change results: left out of the spec hash.
NON_RESULT_KEYS = (
    "name",
    "description",
    "seed",  # the hash names the experiment; records are keyed by (spec_hash, seed)
    "device",
    "output",
    "executor",
    "data.root",
    "data.download",
    "data.num_workers",
    "train.eval_batch_size",
    "train.test_every_epoch",
)

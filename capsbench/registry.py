"""One generic name registry, reused for every kind of component.

Entries are either objects registered with the decorator or lazy ``"module:attr"``
strings, imported on first use, so listing names or validating a spec never
imports torch. External packages add components through the entry-point group
``capsbench.plugins``: each entry point names a module (importing it registers
its components with the decorators) or a callable that is called once.

Example::

    from capsbench.registry import ROUTINGS

    @ROUTINGS.register("my_routing")
    class MyRouting(Routing): ...

    ROUTINGS.get("my_routing")      # -> MyRouting
    ROUTINGS.get("my_routng")       # UserError: ... (did you mean 'my_routing'?)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from capsbench.errors import UserError, did_you_mean

PLUGIN_GROUP = "capsbench.plugins"


class Registry:
    """Name -> component, with lazy entries and did-you-mean errors."""

    def __init__(self, kind: str):
        self.kind = kind  # singular, for messages: "routing", "dataset", ...
        self._entries: dict[str, Any] = {}
        self._sources: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, source: str = "capsbench", replace: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        ``obj`` may be a ``"module:attr"`` string, imported on first ``get``.
        Registering a taken name is an error unless ``replace=True``.
        """
        if obj is None:
            return lambda o: self.register(name, o, source=source, replace=replace)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._entries and not replace and self._entries[name] is not obj:
            raise ValueError(
                f"{self.kind} '{name}' is already registered (by {self._sources[name]}); "
                "pick another name or pass replace=True"
            )
        self._entries[name] = obj
        self._sources[name] = source
        return obj

    def get(self, name: str) -> Any:
        """Return the component named ``name``, importing a lazy entry if needed."""
        load_plugins()
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"available: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        obj = self._entries[name]
        if isinstance(obj, str):
            try:
                obj = _import(obj)
            except (ImportError, AttributeError) as exc:
                raise UserError(
                    f"{self.kind} '{name}' is registered as '{obj}' ({self._sources[name]}) but cannot be "
                    f"imported: {exc.__class__.__name__}: {exc}"
                ) from exc
            self._entries[name] = obj
        return obj

    def source(self, name: str) -> str:
        """Who registered ``name``: 'capsbench' or the plugin's entry-point name."""
        load_plugins()
        return self._sources[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def check(self, name: str, key: str) -> None:
        """Raise a UserError naming the spec ``key`` when ``name`` is not registered."""
        load_plugins()
        if name not in self._entries:
            raise UserError(
                f"{key}: unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"expected one of: {', '.join(sorted(self._entries))}"
            )

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._sources.pop(name, None)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


ROUTINGS = Registry("routing")
MODELS = Registry("model")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")
METRICS = Registry("metric")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")

REGISTRIES: dict[str, Registry] = {
    "routings": ROUTINGS,
    "models": MODELS,
    "backbones": BACKBONES,
    "datasets": DATASETS,
    "losses": LOSSES,
    "metrics": METRICS,
    "optimizers": OPTIMIZERS,
    "schedulers": SCHEDULERS,
}

# The built-in components, declared lazily: the one place that lists them.
_BUILTINS: dict[Registry, dict[str, str]] = {
    ROUTINGS: {
        "em": "capsbench.capsules.routing.em:EMRouting",
        "vb": "capsbench.capsules.routing.vb:VBRouting",
        "self": "capsbench.capsules.routing.self_routing:SelfRouting",
        "dynamic": "capsbench.capsules.routing.dynamic:DynamicRouting",
        "uniform": "capsbench.capsules.routing.uniform:UniformRouting",
    },
    MODELS: {
        "capsnet": "capsbench.models.capsnet:build_capsnet",
    },
    BACKBONES: {
        "sr_convnet": "capsbench.models.backbones:SRConvNet",
        "resnet20": "capsbench.models.backbones:ResNet20",
        "vb_stem": "capsbench.models.backbones:VBStem",
        "em_stem": "capsbench.models.backbones:EMStem",
        "tiny": "capsbench.models.backbones:TinyConvNet",
    },
    DATASETS: {
        "digits": "capsbench.data.digits:load_digits",
        "mnist": "capsbench.data.mnist:load_mnist",
        "fashion_mnist": "capsbench.data.mnist:load_fashion_mnist",
        "cifar10": "capsbench.data.cifar10:load_cifar10",
        "smallnorb": "capsbench.data.smallnorb:load_smallnorb",
        "imagewoof": "capsbench.data.imagewoof:load_imagewoof",
    },
    LOSSES: {
        "spread": "capsbench.train.losses:SpreadLoss",
        "margin": "capsbench.train.losses:MarginLoss",
        "nll": "capsbench.train.losses:NLLLoss",
        "cross_entropy": "capsbench.train.losses:CrossEntropyLoss",
    },
    METRICS: {
        "accuracy": "capsbench.metrics.accuracy:Accuracy",
        "capsule_activations": "capsbench.metrics.activations:CapsuleActivations",
        "grad_norms": "capsbench.metrics.grad_norms:GradNorms",
    },
    OPTIMIZERS: {
        "sgd": "torch.optim:SGD",
        "adam": "torch.optim:Adam",
        "adamw": "torch.optim:AdamW",
    },
    SCHEDULERS: {
        "none": "capsbench.train.optim:constant_schedule",
        "step": "capsbench.train.optim:step_schedule",
        "exponential": "capsbench.train.optim:exponential_schedule",
        "cosine": "capsbench.train.optim:cosine_schedule",
    },
}
for _registry, _table in _BUILTINS.items():
    for _name, _target in _table.items():
        _registry.register(_name, _target)

_plugins_loaded = False


def load_plugins(force: bool = False) -> list[str]:
    """Import every ``capsbench.plugins`` entry point once; return their names.

    A plugin that fails to import is reported on stderr and skipped, so one broken
    third-party package cannot take the whole benchmark down.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            with _registering_as(ep.name):
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
            loaded.append(ep.name)
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported, not fatal
            print(f"warning: capsbench plugin '{ep.name}' ({ep.value}) failed to load: {exc}", file=sys.stderr)
    return loaded


class _registering_as:
    """Mark components registered while a plugin loads with the plugin's name."""

    def __init__(self, plugin: str):
        self.plugin = plugin

    def __enter__(self):
        self._saved = {r: dict(r._sources) for r in REGISTRIES.values()}

    def __exit__(self, *exc):
        for registry, before in self._saved.items():
            for name in registry._sources:
                if name not in before:
                    registry._sources[name] = self.plugin
        return False


def build(registry: Registry, name: str, *args, **kwargs) -> Any:
    """Look ``name`` up in ``registry`` and call it: the one factory entry point."""
    factory: Callable = registry.get(name)
    return factory(*args, **kwargs)

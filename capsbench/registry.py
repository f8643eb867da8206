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
    """Name -> component, with lazy entries and did-you-mean errors.

    ``base`` (a ``"module:attr"`` string, imported only when a component is checked) is what
    every component of the kind must be: a subclass of it (``form="class"``), an instance of
    it (``form="instance"``); ``form="callable"`` asks for any callable. A component is
    checked when it is registered as an object and when a lazy entry is first imported.
    """

    def __init__(self, kind: str, base: str | None = None, form: str = "class"):
        if form not in ("class", "instance", "callable"):
            raise ValueError(f"form must be class, instance or callable, got {form!r}")
        self.kind = kind  # singular, for messages: "routing", "dataset", ...
        self.base = base
        self.form = form
        self._entries: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        self._options: dict[str, Any] = {}  # name -> {option: Option} or a lazy "module:attr" of one
        self._about: dict[str, dict[str, str]] = {}  # name -> facts declared as data (see register)

    def register(
        self,
        name: str,
        obj: Any = None,
        *,
        source: str = "capsbench",
        replace: bool = False,
        options: Any = None,
        about: dict[str, str] | None = None,
    ):
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        ``obj`` may be a ``"module:attr"`` string, imported on first ``get``.
        Registering a taken name is an error unless ``replace=True`` or ``obj`` is what the
        taken lazy entry names (a module registering itself when its lazy entry imports it).
        ``options`` declares the component's options (``{name: capsbench.options.Option}``, or
        a ``"module:attr"`` of such a table in a module that imports no torch), read by
        ``declared_options`` without importing the component. ``about`` declares facts shown
        with the component, as plain strings read without importing it (:meth:`about`).
        """
        if obj is None:
            return lambda o: self.register(name, o, source=source, replace=replace, options=options, about=about)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        own = name in self._entries and _is_own_lazy_entry(self._entries[name], obj)
        if name in self._entries and not replace and self._entries[name] is not obj and not own:
            raise ValueError(
                f"{self.kind} '{name}' is already registered (by {self._sources[name]}); "
                "pick another name or pass replace=True"
            )
        if not isinstance(obj, str):
            self._check_kind(name, obj)
        self._entries[name] = obj
        if not own:  # a module replacing its own lazy entry keeps who registered the name
            self._sources[name] = source
            self._options.pop(name, None)
            self._about.pop(name, None)
        if options is not None:
            self._options[name] = options
        if about is not None:
            plain = isinstance(about, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in about.items())
            if not plain:
                raise ValueError(f"{self.kind} '{name}': about must map names to strings, got {about!r}")
            self._about[name] = dict(about)
        return obj

    def _check_kind(self, name: str, obj: Any) -> None:
        """One-line UserError when ``obj`` is not what this kind of component must be."""
        if self.form == "callable":
            if not callable(obj):
                raise UserError(f"{self.kind} '{name}': expected a callable, got {_describe(obj)}")
            return
        if self.base is None:
            return
        base = _import(self.base)
        ok = isinstance(obj, base) if self.form == "instance" else isinstance(obj, type) and issubclass(obj, base)
        if not ok:
            what = "an instance" if self.form == "instance" else "a subclass"
            raise UserError(
                f"{self.kind} '{name}': expected {what} of {base.__module__}.{base.__qualname__}, got {_describe(obj)}"
            )

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
            self._check_kind(name, obj)
            self._entries[name] = obj
        return obj

    def declared_options(self, name: str) -> Any:
        """The options ``name`` declares (``{option: Option}``), or None when it declares none.

        A declaration given at registration is read without importing the component (the
        built-in routings': ``capsbench validate`` stays free of torch); otherwise the
        component's ``OPTIONS`` attribute, which imports it.
        """
        load_plugins()
        declared = self._options.get(name)
        if isinstance(declared, str):
            try:
                declared = self._options[name] = _import(declared)
            except (ImportError, AttributeError) as exc:
                raise UserError(
                    f"{self.kind} '{name}' declares its options as '{declared}' but they cannot be imported: "
                    f"{exc.__class__.__name__}: {exc}"
                ) from exc
        if declared is None:
            declared = getattr(self.get(name), "OPTIONS", None)
        return declared

    def about(self, name: str) -> dict[str, str]:
        """Facts ``name`` declared at registration (``{}`` when none or not registered), without importing it.

        Routings: ``"activation"`` is set by a method that has no activation of its own, saying how
        capsbench defines the one it measures (the leaderboard marks such methods).
        """
        load_plugins()
        return dict(self._about.get(name, {}))

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
        self._options.pop(name, None)
        self._about.pop(name, None)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _is_own_lazy_entry(entry: Any, obj: Any) -> bool:
    """True when ``entry`` is the lazy ``"module:attr"`` string that names ``obj`` itself.

    A module listed lazily in ``_BUILTINS`` that also registers its component with the
    decorator replaces its own entry when it is imported; it may never replace another's.
    """
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return isinstance(entry, str) and module is not None and entry == f"{module}:{qualname}"


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r}"[:120]


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


# What each kind must be. A base class where capsbench relies on more than a call (the routing
# interface and its declared options, a backbone's out_channels, a data set's pipeline hooks);
# a callable where the contract is the call itself (factories and builders).
ROUTINGS = Registry("routing", base="capsbench.capsules.routing.base:Routing")
MODELS = Registry("model", form="callable")  # builder(cfg, num_classes, in_channels, image_size) -> nn.Module
BACKBONES = Registry("backbone", base="capsbench.models.backbones:Backbone")
DATASETS = Registry("dataset", base="capsbench.data.loader:DatasetLoader", form="instance")
LOSSES = Registry("loss", form="callable")  # (**loss_options) -> nn.Module
METRICS = Registry("metric", form="callable")
OPTIMIZERS = Registry("optimizer", form="callable")  # (params, **kwargs) -> torch.optim.Optimizer
SCHEDULERS = Registry("scheduler", form="callable")  # (optimizer, cfg, epochs) -> LRScheduler

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

# The built-in components, declared lazily: the one place that lists them. An entry is
# "module:attr", or ("module:attr", "module:attr of its options table") when the component has
# options to check without importing it (routings: capsbench/capsules/routing/declared_options.py).
_ROUTING_OPTIONS = "capsbench.capsules.routing.declared_options"
_BUILTINS: dict[Registry, dict[str, str | tuple[str, str]]] = {
    ROUTINGS: {
        "em": ("capsbench.capsules.routing.em:EMRouting", f"{_ROUTING_OPTIONS}:EM"),
        "vb": ("capsbench.capsules.routing.vb:VBRouting", f"{_ROUTING_OPTIONS}:VB"),
        "self": ("capsbench.capsules.routing.self_routing:SelfRouting", f"{_ROUTING_OPTIONS}:SELF"),
        "dynamic": ("capsbench.capsules.routing.dynamic:DynamicRouting", f"{_ROUTING_OPTIONS}:DYNAMIC"),
        "uniform": ("capsbench.capsules.routing.uniform:UniformRouting", f"{_ROUTING_OPTIONS}:UNIFORM"),
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


def register_builtins(builtins: dict[Registry, dict[str, str | tuple[str, str]]]) -> None:
    """Register lazy entries as ``_BUILTINS`` lists them (tests follow CONTRIBUTING.md through this)."""
    for registry, table in builtins.items():
        for name, entry in table.items():
            target, options = (entry, None) if isinstance(entry, str) else entry
            registry.register(name, target, options=options)


register_builtins(_BUILTINS)

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

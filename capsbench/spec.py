"""Specs: YAML -> validated run configs.

A spec is a YAML file whose keys follow ``capsbench.config.RunConfig``, plus
- ``extends: path.yaml`` (or a list): files it builds on, resolved relative to the spec, or
  ``pkg:<package>/<path>``: a file shipped inside an installed Python package (a plugin's
  method preset), found without importing the package;
- ``sweep: {dotted.key: [values...]}``: a grid, expanded into one run per point
  (the cartesian product, in the order written);
- ``sweep: {extends: [a.yaml, b.yaml]}``: a *preset* axis, the outermost one: the grid
  runs once per file (relative to the spec), each merged in as one more base. This is
  how one sweep compares methods that each need their own settings (backbone,
  optimiser) without a grid over every combination of them.
Precedence, lowest first: the ``extends`` bases, the swept preset, the spec's own keys,
CLI overrides (``key=value``, the value parsed as YAML), the sweep point. Overriding a
swept key fixes it.

Example::

    runs = load("specs/em_depth_sweep.yaml", ["train.epochs=2"])
    runs[0].config.model.depth, runs[0].spec_hash, runs[0].label
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from capsbench.config import NON_RESULT_KEYS, RANGE, RunConfig, drop_hash_neutral_defaults, plain
from capsbench.errors import SpecError, UserError, did_you_mean
from capsbench.models.remedies import check_remedies
from capsbench.options import Option, check_options

SPEC_KEYS = ("extends", "sweep")  # keys of a spec file that are not run-config keys


@dataclass
class RunSpec:
    """One fully resolved run of a spec."""

    config: DictConfig  # typed, validated RunConfig
    spec_hash: str  # sha256 of the result-relevant config (seed excluded)
    point: dict[str, Any]  # the sweep values of this run ({} without a sweep)

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def run_id(self) -> str:
        """Unique per (spec hash, seed): the key of a result record."""
        return f"{self.spec_hash[:12]}-s{self.seed}"

    @property
    def label(self) -> str:
        """A folder name a person can read: the swept values, then a short hash."""
        parts = [_part(key, value) for key, value in self.point.items() if key != "seed"]
        parts.append(f"seed{self.seed}")
        return "-".join(parts + [self.spec_hash[:8]])


def _part(key: str, value: Any) -> str:
    """``depth3``; names speak for themselves: ``mnist`` rather than ``namemnist``, ``em`` for a preset."""
    last = key.split(".")[-1]
    return _short(value) if last in ("name", "extends") else f"{last}{_short(value)}"


def _short(value: Any) -> str:
    text = str(value)
    if text.endswith((".yaml", ".yml")):  # a swept preset: its file name says which
        text = Path(text).stem
    text = text.replace("/", "_").replace(" ", "")
    return text[:24]


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.1 wants 1.0e-3) and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: malformed YAML: {problem}") from None


def read_yaml_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc.__class__.__name__}: {exc})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping of keys, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- inheritance


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("sweep",):
            out[key] = _deep_merge(out[key], value)
        elif key == "sweep" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _layers(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    """``(bases, own)``: everything a spec file ``extends`` merged, and the file's own keys."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError(f"{path}: 'extends' forms a cycle: {cycle}")
    data = read_yaml_file(path)
    parents = data.pop("extends", None)
    if parents is None:
        parents = []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError(f"{path}: extends: expected a file path or a list of paths, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, resolve_file(_relative(path, parent, "extends"), (*_chain, path)))
    return merged, data


PACKAGE_PREFIX = "pkg:"  # extends: pkg:<package>/<path>: a file inside an installed package


def _relative(spec_path: Path, name: str, key: str) -> Path:
    if name.startswith(PACKAGE_PREFIX):
        return _packaged(spec_path, name, key)
    target = (spec_path.parent / name).resolve()
    if not target.exists():
        raise SpecError(f"{spec_path}: {key}: file '{name}' not found (looked for {target})")
    return target


def _packaged(spec_path: Path, name: str, key: str) -> Path:
    """``pkg:<package>/<path>``: the file inside the installed package (a plugin ships its presets so).

    Found through the import system without running the package (no torch import for ``validate``).
    """
    package, _, inner = name[len(PACKAGE_PREFIX):].partition("/")
    if not package.isidentifier() or not inner:
        raise SpecError(f"{spec_path}: {key}: expected pkg:<package>/<path inside it>, got '{name}'")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    roots = list(found.submodule_search_locations or []) if found is not None else []
    if not roots:
        raise SpecError(
            f"{spec_path}: {key}: '{name}': no installed package '{package}' (install the plugin that ships it)"
        )
    for root in roots:
        target = (Path(root) / inner).resolve()
        if target.exists():
            return target
    raise SpecError(f"{spec_path}: {key}: file '{name}' not found (looked for {Path(roots[0]) / inner})")


def resolve_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a spec file and everything it ``extends``, merged (the extending file wins)."""
    bases, own = _layers(path, _chain)
    return _deep_merge(bases, own)


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=2"`` -> ``("train.epochs", 2)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"override '{text}': expected key=value, e.g. train.epochs=2")
    value = parse_yaml(raw, f"override {key}") if raw.strip() else None
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set '{key}' inside it")
        node = child
    node[parts[-1]] = value


def _flatten_sweep(sweep: Any, source: str) -> dict[str, list]:
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise SpecError(f"{source}: sweep: expected a mapping of dotted keys to lists, got {sweep!r}")
    flat: dict[str, list] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            elif isinstance(value, list) and value:
                flat[dotted] = value
            else:
                raise SpecError(f"{source}: sweep.{dotted}: expected a non-empty list of values, got {value!r}")

    walk(sweep, "")
    return flat


# ----------------------------------------------------------------------------- validation


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_expected(a) for a in args) + " or null"
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_expected(typing.get_args(tp)[0])}" if typing.get_args(tp) else "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float only) or raise SpecError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except SpecError:
                pass
        raise _type_error(key, value, tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, tp)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, value, tp)
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{key}[{i}]") if item_tp is not Any else v for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, tp)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, tp)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, tp)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(key, value, tp)
        return value
    return value


def _type_error(key: str, value: Any, tp: Any) -> SpecError:
    return SpecError(f"{key}: expected {_expected(tp)}, got {value!r} ({type(value).__name__})")


def _validate_section(data: Any, cls: type, prefix: str) -> dict:
    """Check ``data`` against dataclass ``cls``: unknown keys and types, recursively."""
    where = prefix.rstrip(".") or "spec"
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in data.items():
        if key not in hints:
            raise SpecError(
                f"{prefix}{key}: unknown key{did_you_mean(str(key), names)}; "
                f"expected one of: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            out[key] = _validate_section(value if value is not None else {}, tp, f"{prefix}{key}.")
        else:
            out[key] = _check_type(value, tp, f"{prefix}{key}")
    return out


@functools.cache
def _declared_ranges(cls: type = RunConfig, prefix: str = "") -> tuple[tuple[str, Option], ...]:
    """``(dotted key, Option)`` of every field declared with ``config.ranged``, from the annotations."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Option]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _declared_ranges(tp, f"{prefix}{f.name}.")
        elif RANGE in f.metadata:
            args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
            (base,) = [a for a in args if a is not type(None)]
            option = Option(base, f.default, nullable=type(None) in args, **f.metadata[RANGE])
            out.append((f"{prefix}{f.name}", option))
    return tuple(out)


def _check_range(cfg: DictConfig) -> None:
    """Every value against its field's declared range: the one place ranges are checked."""
    for key, option in _declared_ranges():
        option.check(OmegaConf.select(cfg, key), key)


def _check_names(cfg: DictConfig) -> None:
    """Registry names: did-you-mean on misspellings."""
    from capsbench.registry import BACKBONES, DATASETS, LOSSES, MODELS, OPTIMIZERS, ROUTINGS, SCHEDULERS

    MODELS.check(cfg.model.arch, "model.arch")
    ROUTINGS.check(cfg.model.routing, "model.routing")
    BACKBONES.check(cfg.model.backbone, "model.backbone")
    DATASETS.check(cfg.data.name, "data.name")
    if cfg.train.loss is not None:
        LOSSES.check(cfg.train.loss, "train.loss")
    OPTIMIZERS.check(cfg.train.optimizer.name, "train.optimizer.name")
    SCHEDULERS.check(cfg.train.scheduler.name, "train.scheduler.name")


# Arguments the model builder passes every routing itself: never routing options.
_ROUTING_ARGUMENTS = ("children", "parents", "pose_dim", "iterations", "in_pose_dim")


def _check_routing_options(cfg: DictConfig) -> None:
    """``model.routing_options`` against the options the routing declares (types, ranges, did-you-mean).

    The built-in routings declare theirs as data, so this imports no torch.
    """
    from capsbench.registry import ROUTINGS

    options = plain(cfg.model.routing_options)
    for key in options:
        if key in _ROUTING_ARGUMENTS:
            hint = f"set model.{key} instead" if key in ("pose_dim", "iterations") else "the model builder sets it"
            raise SpecError(f"model.routing_options.{key}: not a routing option ({hint})")
    declared = ROUTINGS.declared_options(cfg.model.routing) or {}
    check_options(options, declared, "model.routing_options", f"routing '{cfg.model.routing}'")


def _check_model_combinations(cfg: DictConfig) -> None:
    """Model keys that are each valid but cannot be combined."""
    if cfg.model.momentum_residual is None:
        return
    if cfg.model.arch != "capsnet":
        raise SpecError(
            f"model.momentum_residual: only capsule networks (model.arch=capsnet) have stacked capsule layers to "
            f"make momentum blocks of, got model.arch={cfg.model.arch}; set model.momentum_residual=null"
        )
    if cfg.model.residual:
        raise SpecError(
            "model.momentum_residual: cannot be combined with model.residual=true (two skip rules on the same "
            "layers); set one of them"
        )


@functools.cache
def _defaults() -> DictConfig:
    """The typed default RunConfig, built once: building it is most of the cost of a 150-run sweep."""
    return OmegaConf.structured(RunConfig)


def build_config(data: dict) -> DictConfig:
    """Validate a merged spec mapping (without ``extends``/``sweep``) into a typed RunConfig."""
    clean = _validate_section(data, RunConfig, "")
    cfg = OmegaConf.merge(_defaults(), OmegaConf.create(clean))  # merge copies: the cached defaults stay clean
    _check_range(cfg)
    _check_names(cfg)
    _check_routing_options(cfg)
    _check_model_combinations(cfg)
    check_remedies(cfg)
    return cfg


# ----------------------------------------------------------------------------- hash


def canonical(cfg: DictConfig) -> dict:
    """The result-relevant part of a config: everything but ``NON_RESULT_KEYS`` and hash-neutral defaults."""
    data = OmegaConf.to_container(cfg, resolve=True)

    def parent(dotted: str) -> tuple[dict, str]:
        node, (*parents, last) = data, dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        return node, last

    for dotted in NON_RESULT_KEYS:
        node, last = parent(dotted)
        node.pop(last, None)
    return drop_hash_neutral_defaults(data)


def spec_hash(cfg: DictConfig) -> str:
    """SHA-256 of the canonical JSON of the result-relevant config (stable across runs and machines)."""
    text = json.dumps(canonical(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- entry point


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> list[RunSpec]:
    """Load, inherit, override, validate and expand a spec into its runs."""
    path = Path(path)
    bases, own = _layers(path)
    sweep = _flatten_sweep(_deep_merge(bases, own).get("sweep"), str(path))
    presets = sweep.pop("extends", None)
    fixed: list[tuple[str, Any]] = []
    for text in overrides:
        key, value = parse_override(text)
        if key == "extends":
            raise SpecError(f"override '{text}': a spec's bases cannot be overridden; edit its extends")
        if key == "sweep.extends":  # run some of the presets (paths relative to the spec, as in it)
            if not isinstance(value, list) or not value:
                raise SpecError(f"override '{text}': expected a non-empty list of preset files")
            presets = value
            continue
        if key.startswith("sweep."):
            sweep.update(_flatten_sweep({key[len("sweep."):]: value}, "override"))
            continue
        sweep.pop(key, None)  # an override fixes a swept key
        fixed.append((key, value))

    def layered(preset: dict) -> dict:
        data = _deep_merge(_deep_merge(bases, preset), own)
        data.pop("sweep", None)
        for key, value in fixed:
            _set_dotted(data, key, value)
        data.setdefault("name", path.stem)
        return data

    if presets is None:
        return expand(layered({}), sweep, str(path))
    runs: list[RunSpec] = []
    for name in presets:
        if not isinstance(name, str):
            raise SpecError(f"{path}: sweep.extends: expected a list of spec file paths, got {name!r}")
        preset = resolve_file(_relative(path, name, "sweep.extends"))
        if "sweep" in preset:
            raise SpecError(f"{name}: a swept preset sets keys; it cannot have its own sweep (in {path})")
        runs += expand(layered(preset), sweep, str(path), base_point={"extends": name})
    _check_unique(runs, str(path))
    return runs


def expand(data: dict, sweep: dict[str, list], source: str = "spec", base_point: dict | None = None) -> list[RunSpec]:
    """One RunSpec per point of the sweep grid (cartesian product, in written order).

    ``base_point`` (the swept preset) is recorded first in every point; it is not a config key.
    """
    keys = list(sweep)
    runs = []
    for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        grid = dict(zip(keys, values))
        point = {**(base_point or {}), **grid}
        merged = json.loads(json.dumps(data))  # deep copy of plain YAML data
        for key, value in grid.items():
            _set_dotted(merged, key, value)
        try:
            cfg = build_config(merged)
        except UserError as exc:
            key = str(exc).split(":")[0].split("[")[0]
            if any(key == k or key.startswith(k + ".") for k in point):
                raise SpecError(f"{exc} (sweep point {_point_text(point)} of {source})") from None
            preset = f" with preset {base_point['extends']}" if base_point else ""
            raise SpecError(f"{exc} (in {source}{preset})") from None
        runs.append(RunSpec(config=cfg, spec_hash=spec_hash(cfg), point=point))
    _check_unique(runs, source)
    return runs


def _check_unique(runs: list[RunSpec], source: str) -> None:
    seen: dict[str, dict] = {}
    for run in runs:
        if run.run_id in seen:
            raise SpecError(
                f"{source}: sweep points {_point_text(seen[run.run_id])} and {_point_text(run.point)} "
                "give the same run (a swept key that does not change results?)"
            )
        seen[run.run_id] = run.point


def _point_text(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)

"""One run's capsule types through training, by the long-cpu pre-registration (docs/long-protocol.md).

For every stacked ConvCaps layer ``convL`` and type ``k``, ``A(e)`` is the type's mean activation over
the validation epoch ``e`` (eq. 12, ``activations.npz``). With ``E`` the run's last epoch:

- born *alive* when ``A(1) > 0.05``, born *dead* when ``A(1) <= 0.01`` (eq. 13), otherwise born *weak*;
- *dies* when born alive and ``A(E) <= 0.01``; its epoch of death is the first epoch from which ``A``
  stays ``<= 0.01`` through ``E``;
- *relatively dead* at an epoch (secondary, reported only) when ``A <= 0.16 x`` the mean of its
  layer's type activations at that epoch.

For each dying type, ``causes`` lists every category of question 4 whose rule holds (a type can meet
several; the pre-registration gives no precedence, so none is invented here):

- ``activation margin``: ``|delta beta_a| > |delta cost|`` between epoch 1 and the epoch of death;
- ``variance blow-up`` (EM) / ``entropy growth`` (VB): ``|delta cost| >= |delta beta_a|`` and
  ``cost / mass`` grew, by a larger relative change than the (signed) relative change of ``mass``;
- ``mass collapse``: ``|delta cost| >= |delta beta_a|`` and ``|relative change of mass|`` is larger
  than ``|relative change of cost / mass|``;
- ``cost (neither rule)``: the cost carried it but neither of the two above holds;
- ``routing collapse`` (any method): the layer's coupling entropy at the epoch of death is below
  0.5, the type's activation fell (``A(death) < A(1)``) and the median activation of the layer
  below did not (``p50(death) >= p50(1)``);
- ``upstream``: the median activation of the layer below was ``>= 0.05`` at epoch 1 and fell below
  0.05 at or before the epoch of death.

Relative changes divide by ``|value at epoch 1|`` (EM's cost is negative while pose BatchNorm keeps
the vote variances small). VB with its activation BatchNorm: a type is *hidden by BatchNorm* at an
epoch when ``sigmoid(mean logit before the BN) <= 0.01`` and ``sigmoid(mean logit after it) > 0.01``.

Example::

    facts = run_facts(RunDir(Path("runs/long_cpu/self-depth6-seed0-...")))
    facts["dying"], facts["layers"][0]["types"][3]["born"]       # 0, 'alive'
"""

from __future__ import annotations

import math

from capsbench.metrics.grad_norms import input_ratio
from capsbench.report.rundir import RunDir

DEAD = 0.01  # eq. 13, the paper's threshold (the protocol's metrics.dead_threshold)
BORN_ALIVE = 0.05  # A(1) above this: born alive
RELATIVE = 0.16  # relatively dead: A <= 0.16 x the layer's mean type activation
COLLAPSED_ENTROPY = 0.5  # routing collapse: coupling entropy (normalised) below this
UPSTREAM_MEDIAN = 0.05  # upstream: the layer below's median activation fell below this
COST_TERMS = {"em": "variance blow-up", "vb": "entropy growth"}


def born_state(a1: float, dead: float = DEAD) -> str:
    return "alive" if a1 > BORN_ALIVE else ("dead" if a1 <= dead else "weak")


def death_epoch(series: list[tuple[int, float]], dead: float = DEAD) -> int | None:
    """First epoch from which ``A`` stays ``<= dead`` through the last one; None when alive at the last."""
    epoch = None
    for e, a in reversed(series):
        if a > dead:
            break
        epoch = e
    return epoch


def _relative(new: float, old: float) -> float:
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - old) / abs(old)


def term_causes(first: dict, at_death: dict, k: int, routing: str) -> list[str]:
    """The term categories of type ``k`` from its layer's terms at epoch 1 and at its epoch of death."""
    def value(terms, name):
        v = terms.get(name)
        v = v[k] if isinstance(v, list) else v
        return None if v is None or not math.isfinite(v) else float(v)

    beta = (value(first, "beta_a"), value(at_death, "beta_a"))
    cost = (value(first, "cost"), value(at_death, "cost"))
    mass = (value(first, "mass"), value(at_death, "mass"))
    if None in beta or None in cost:
        return []
    d_beta, d_cost = beta[1] - beta[0], cost[1] - cost[0]
    if abs(d_beta) > abs(d_cost):
        return ["activation margin"]
    if None in mass or mass[0] == 0 or mass[1] == 0:
        return ["cost (neither rule)"]
    rel_mass = _relative(mass[1], mass[0])
    rel_unit = _relative(cost[1] / mass[1], cost[0] / mass[0])
    out = []
    if rel_unit > 0 and rel_unit > rel_mass:
        out.append(COST_TERMS.get(routing, "cost per unit mass"))
    if abs(rel_mass) > abs(rel_unit):
        out.append("mass collapse")
    return out or ["cost (neither rule)"]


def _median(mechanism: dict, layer: str):
    return ((mechanism.get(layer) or {}).get("activation_percentiles") or {}).get("p50")


def flow_causes(history: dict[int, dict], layer: str, below: str, born: int, died: int, a1: float,
                ad: float) -> list[str]:
    """``routing collapse`` and ``upstream`` for a type of ``layer`` that died at ``died``."""
    mech = {e: line.get("mechanism") or {} for e, line in history.items()}
    out = []
    entropy = (mech.get(died, {}).get(layer) or {}).get("coefficient_entropy")
    below_first, below_death = _median(mech.get(born, {}), below), _median(mech.get(died, {}), below)
    if (entropy is not None and entropy < COLLAPSED_ENTROPY and ad < a1 and below_first is not None
            and below_death is not None and below_death >= below_first):
        out.append("routing collapse")
    if below_first is not None and below_first >= UPSTREAM_MEDIAN and any(
        (m := _median(mech.get(e, {}), below)) is not None and m < UPSTREAM_MEDIAN
        for e in sorted(mech) if e <= died
    ):
        out.append("upstream")
    return out


def _terms(history: dict[int, dict], epoch: int, layer: str) -> dict:
    return (((history.get(epoch) or {}).get("mechanism") or {}).get(layer) or {}).get("terms") or {}


def _hidden_by_bn(terms: dict, dead: float) -> list[int]:
    raw, after = terms.get("logit"), terms.get("logit_bn")
    if not isinstance(raw, list) or not isinstance(after, list):
        return []
    sig = lambda x: 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # noqa: E731
    return [k for k, (r, b) in enumerate(zip(raw, after)) if sig(r) <= dead < sig(b)]


def run_facts(run: RunDir) -> dict:
    """Per stacked layer and type: birth, death, relative death and causes; per layer: input dependence at E."""
    cfg = run.config()
    model = cfg.get("model") or {}
    routing = str(model.get("routing"))
    dead = run.dead_threshold()
    acts = run.activations("val")
    history = run.history_by_epoch()
    epochs = sorted(acts)
    order = run.layer_order()
    stacked = [name for name in order if name.startswith("conv") and name[4:].isdigit()]
    stacked.sort(key=lambda n: int(n[4:]))
    depth = int(model.get("depth") or len(stacked))
    layers = []
    counts = {"dying": 0, "born_dead": 0, "born_weak": 0, "born_alive": 0, "relative_dead_last": 0, "hidden_by_bn": 0}
    first, last = (epochs[0], epochs[-1]) if epochs else (None, None)
    for l, name in enumerate(stacked, start=1):
        below = order[order.index(name) - 1] if order.index(name) > 0 else None
        series = [(e, acts[e][name]) for e in epochs if name in acts[e]]
        if not series:
            continue
        types = []
        last_mean = _mean(series[-1][1])
        for k in range(len(series[0][1])):
            a = [(e, float(v[k])) for e, v in series]
            a1, a_last = a[0][1], a[-1][1]
            t = {"born": born_state(a1, dead), "a_first": a1, "a_last": a_last,
                 "relative_dead_last": a_last <= RELATIVE * last_mean}
            died = death_epoch(a, dead) if t["born"] == "alive" else None
            t["death_epoch"] = died
            if died is not None:
                ad = dict(a)[died]
                t["causes"] = term_causes(_terms(history, first, name), _terms(history, died, name), k, routing)
                t["causes"] += flow_causes(history, name, below, first, died, a1, ad) if below else []
            counts["dying"] += died is not None
            counts[f"born_{t['born']}"] += 1
            counts["relative_dead_last"] += t["relative_dead_last"]
            types.append(t)
        mech_last = ((history.get(last) or {}).get("mechanism") or {}).get(name) or {}
        hidden = _hidden_by_bn(mech_last.get("terms") or {}, dead)
        counts["hidden_by_bn"] += len(hidden)
        layers.append({
            "layer": name, "position": l, "relative_position": l / depth, "types": types,
            "coefficient_cv_images": mech_last.get("coefficient_cv_images"),
            "coefficient_entropy": mech_last.get("coefficient_entropy"),
            "hidden_by_bn": hidden,
        })
    bottom = stacked[0] if stacked else None
    ratio = {f"{key}_{when}": value for when, epoch in (("first", first), ("last", last))
             for key, value in zip(("gradient_ratio", "class_input_gradient"),
                                   input_ratio((history.get(epoch) or {}).get("grad_norms"), bottom))}
    return {"routing": routing, "depth": depth, "first_epoch": first, "last_epoch": last, "layers": layers, **counts,
            **ratio}


def _mean(values) -> float:
    vals = [float(v) for v in values]
    return math.fsum(vals) / len(vals) if vals else 0.0

"""What a study's configuration section shows: the settings every run shares that matter, and
every setting in which the groups differ.

A resolved run config lists every knob of every part, including the parts the model does not use
(``model.moe.*`` under a dense FFN, ``model.memory.*``, the RoPE base under learned positions...).
Such a knob is *unused* in that run: it is left out of the shared settings and shown as "unused"
beside the groups that do use it. Mechanism knobs are keyed by mechanism
(``mechanisms.<name>.<knob>``), so a knob is compared with the same mechanism's knob in other
groups. Settings that vary between runs of one group (the seed, the run name, the domain order)
are named but not tabulated: the groups table lists seeds and orders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

UNUSED = "unused"
IDENTITY = ("name",)
"""Keys that name a run rather than configure it (the run name is the study and group)."""
BOOKKEEPING = ("data.cache_dir", "train.threads", "train.log_every", "train.checkpoint_every")
"""Keys that say where and how often a run writes, not what it learns: left out of both tables
(a difference in them is not a difference between the groups' treatments)."""
UNSET = ("null", "{}", "[]")

Flat = dict[str, str]


def _is(key: str, value: str) -> Callable[[Flat], bool]:
    return lambda flat: flat.get(key) == value


def _is_not(key: str, value: str) -> Callable[[Flat], bool]:
    return lambda flat: key in flat and flat[key] != value


def _positive(key: str) -> Callable[[Flat], bool]:
    return lambda flat: _number(flat.get(key)) > 0


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0


USED_WHEN: tuple[tuple[str, Callable[[Flat], bool]], ...] = (
    ("model.moe.", _is("model.ffn", "moe")),
    ("model.memory.", _is("model.ffn", "memory")),
    ("model.freeze_qk", _is("model.attention", "orthogonal")),
    ("model.qk_init", _is("model.attention", "orthogonal")),
    ("model.rope_theta", _is("model.positions", "rope")),
    ("model.sparsity_block", _is("model.sparsity", "block")),
    ("model.sparsity_density", _is("model.sparsity", "block")),
    ("model.sparsity_init", _is_not("model.sparsity", "none")),
    ("train.sample_tokens", _positive("train.samples")),
    ("train.sample_temperature", _positive("train.samples")),
    # sleep replays either stored real rows or generated ones (mechanisms/sleep.py)
    *(
        (f"mechanisms.sleep.{knob}", _is("mechanisms.sleep.source", "generated"))
        for knob in ("temperature", "top_k", "prompt", "prompt_tokens", "gen_batch_size")
    ),
    ("mechanisms.sleep.policy", _is("mechanisms.sleep.source", "real")),
)
"""A key (or every key under a prefix ending in ".") is used only when its condition holds on the
run's flattened config: the part that reads it is switched on (see the knobs' descriptions in
:mod:`forgetlab.config.schema`)."""


def flatten_config(
    config: Mapping[str, Any], knob_defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> Flat:
    """Dotted keys to display strings; ``mechanisms`` as the list of names plus one key per knob
    (``mechanisms.<name>.<knob>``, the knobs a spec left out at their ``knob_defaults``); other
    lists as JSON."""
    flat: Flat = {}
    _flatten_into(
        flat, {k: v for k, v in config.items() if k != "mechanisms" and k not in IDENTITY}, ""
    )
    mechs = [dict(m) for m in config.get("mechanisms") or []]
    flat["mechanisms"] = ", ".join(str(m.get("name")) for m in mechs) or "none"
    for m in mechs:
        name = str(m.pop("name", "?"))
        _flatten_into(flat, {**(knob_defaults or {}).get(name, {}), **m}, f"mechanisms.{name}.")
    return flat


def _flatten_into(flat: Flat, value: Any, prefix: str) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten_into(flat, v, f"{prefix}{k}.")
    elif isinstance(value, list | tuple | Mapping):
        flat[prefix[:-1]] = json.dumps(value)
    else:
        flat[prefix[:-1]] = value if isinstance(value, str) else json.dumps(value)


def unused_keys(flat: Flat) -> set[str]:
    """The keys of a flattened run config that its model and training do not read, plus the
    sources of domains the run does not train on."""
    out = set()
    for key in flat:
        for pattern, used in USED_WHEN:
            hit = key.startswith(pattern) if pattern.endswith(".") else key == pattern
            if hit and not used(flat):
                out.add(key)
    domains = set(json.loads(flat.get("data.domains", "[]")))
    out |= {k for k in flat if k.startswith("data.sources.") and k.split(".")[2] not in domains}
    return out


@dataclass(frozen=True)
class ConfigComparison:
    """The configuration section's content.

    ``shared``: (key, value) set alike in every run and used by all of them.
    ``differences``: (key, {group: value}) for every key whose value (or use) differs between
    groups; a group's value lists each distinct value of its runs, or ``unused``.
    ``per_run``: keys that vary between runs of a single group (seed, name, order).
    ``unused``: keys no run uses (left out of both tables).
    ``unset``: keys every run leaves unset (null or empty: the part's default rule applies).
    ``bookkeeping``: :data:`BOOKKEEPING` keys, left out (the full config still lists them).
    """

    groups: list[str]
    shared: list[tuple[str, str]]
    differences: list[tuple[str, dict[str, str]]]
    per_run: list[str]
    unused: list[str]
    unset: list[str]
    bookkeeping: list[str]


def compare_configs(
    configs: Mapping[str, Mapping[str, Any]],
    group_of: Mapping[str, str],
    knob_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> ConfigComparison:
    """Compare the resolved configs of runs (run id -> config) grouped by ``group_of``; runs
    without a group are ignored. Groups keep their first-seen order, keys their config order."""
    flats = {r: flatten_config(c, knob_defaults) for r, c in configs.items() if r in group_of}
    for flat in flats.values():
        for key in unused_keys(flat):
            flat[key] = UNUSED
    groups = list(dict.fromkeys(group_of[r] for r in flats))
    keys = list(dict.fromkeys(k for flat in flats.values() for k in flat))
    shared, differences, per_run, unused, unset = [], [], [], [], []
    bookkeeping = [k for k in keys if k in BOOKKEEPING]
    for key in (k for k in keys if k not in BOOKKEEPING):
        by_group = {
            g: list(
                dict.fromkeys(
                    flat.get(key, UNUSED) for r, flat in flats.items() if group_of[r] == g
                )
            )
            for g in groups
        }
        values = {v for vs in by_group.values() for v in vs}
        if any(len(vs) > 1 for vs in by_group.values()):
            per_run.append(key)
        elif values == {UNUSED}:
            unused.append(key)
        elif values - {UNUSED} <= set(UNSET):
            unset.append(key)
        elif len(values) == 1:
            shared.append((key, values.pop()))
        else:
            differences.append((key, {g: vs[0] for g, vs in by_group.items()}))
    return ConfigComparison(groups, shared, differences, per_run, unused, unset, bookkeeping)

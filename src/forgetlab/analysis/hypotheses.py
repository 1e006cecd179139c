"""Pre-registered hypotheses: a restricted evaluator for their criteria, and verdicts with evidence.

A criterion is a Python *expression* over a fixed namespace, e.g.
``abs(ppl.C - ppl.B) / ppl.B < 0.05``. It is never passed to ``eval``: :func:`evaluate` walks the
AST and allows only numbers, arithmetic, comparisons, ``and``/``or``/``not``, ``abs``/``min``/``max``
and ``family.member`` look-ups; anything else (calls, subscripts, dunders, lambdas) is refused with
:class:`HypothesisError`, so a spec cannot run code through the report.

The namespace (:data:`ALIASES`, from the metric registry; README and report list it): ``<alias>.<group>`` is the mean over
the group's finished runs, e.g. ``ppl.C`` = mean of exp(loss.final_mean) in group C. Every results
column is also available by its name with ``.`` and ``@`` replaced by ``_`` (``loss_retention_1``).
Group names that are not identifiers are sanitised the same way (``oelm-freeze`` -> ``oelm_freeze``).
For factorial designs, ``effect.T`` / ``effect_lo.T`` / ``effect_hi.T`` / ``p.T`` give a term's
effect on the primary metric, its 95% interval and its corrected p (interaction ``T:W`` -> ``T_W``).
For group designs, ``effect.G`` / ``effect_lo.G`` / ``effect_hi.G`` / ``p.G`` give group G against
the reference on the primary metric by the pre-registered test: its difference (the Hodges-Lehmann
shift under Mann-Whitney), its interval (Welch only) and its p corrected across the groups, gated
by the omnibus test under ``anova`` / ``kruskal`` (:func:`forgetlab.analysis.stats.adjust`).

Verdict: ``pass`` / ``fail`` from the group means; ``undetermined`` when a value it needs is missing.
``support`` is the share of bootstrap resamples (runs resampled within each group) in which the
criterion holds: how fragile the verdict is to run-to-run noise (None when every group has one run).
``untested`` says why a pass / fail rests on group means alone, with no statistical test behind it:
``"1 run per group"`` when no group the criterion reads has a second run, ``"criterion has no test"``
when runs are replicated but the criterion reads no ``p`` / ``effect_lo`` / ``effect_hi`` term. It is
None for a tested verdict (and for ``undetermined``); the report prints it beside the verdict.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forgetlab.analysis.registry import aliases
from forgetlab.config import ConfigError

# alias -> (results column, transform of the per-run value, description)
ALIASES: dict[str, tuple[str, Callable[[float], float], str]] = {
    alias.name: (column, alias.transform, alias.meaning) for alias, column in aliases()
}
EFFECT_FAMILIES = ("effect", "effect_lo", "effect_hi", "p")
# families whose values come from a statistical test (a corrected p, or a confidence bound)
TEST_FAMILIES = ("p", "effect_lo", "effect_hi")
UNTESTED_ONE_RUN = "1 run per group"
UNTESTED_NO_TEST = "criterion has no test"
FUNCTIONS: dict[str, Callable[..., float]] = {"abs": abs, "min": min, "max": max}
BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
CMPOPS = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
MAX_EXPONENT = 64


class HypothesisError(ConfigError):
    """A criterion that is not allowed or names something the namespace lacks."""


class Missing(Exception):
    """A value the criterion needs is absent (e.g. the group has no finished run)."""


def identifier(name: str) -> str:
    """A group or column name as an attribute: non-alphanumerics become ``_``."""
    out = re.sub(r"\W", "_", str(name))
    return f"g{out}" if out[:1].isdigit() else out


def evaluate(expr: str, namespace: dict[str, dict[str, float | None]]) -> Any:
    """Evaluate ``expr`` over ``namespace`` ({family: {member: value}}) with the allowed syntax only."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise HypothesisError(f"criterion {expr!r} is not a valid expression: {e.msg}") from None
    return _eval(tree.body, namespace, expr)


def _eval(node: ast.AST, ns: dict[str, dict[str, float | None]], expr: str) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        family, member = node.value.id, node.attr
        if member.startswith("_") or family not in ns:
            raise HypothesisError(f"criterion {expr!r}: unknown name {family}.{member}")
        if member not in ns[family]:
            raise HypothesisError(
                f"criterion {expr!r}: {family!r} has no member {member!r} "
                f"(known: {sorted(ns[family])})"
            )
        value = ns[family][member]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise Missing(f"{family}.{member}")
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        left, right = _eval(node.left, ns, expr), _eval(node.right, ns, expr)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise HypothesisError(f"criterion {expr!r}: exponent above {MAX_EXPONENT}")
        try:
            return BINOPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise Missing("division by zero") from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
        v = _eval(node.operand, ns, expr)
        return (
            -v
            if isinstance(node.op, ast.USub)
            else (+v if isinstance(node.op, ast.UAdd) else not v)
        )
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, ns, expr) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in CMPOPS for op in node.ops):
        left = _eval(node.left, ns, expr)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, ns, expr)
            if not CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
        and node.args
        and not any(isinstance(a, ast.Starred) for a in node.args)
    ):
        return FUNCTIONS[node.func.id](*(_eval(a, ns, expr) for a in node.args))
    raise HypothesisError(
        f"criterion {expr!r}: {ast.unparse(node)!r} is not allowed (only numbers, arithmetic, "
        "comparisons, and/or/not, abs/min/max and names like ppl.C)"
    )


def referenced(expr: str) -> list[tuple[str, str]]:
    """The ``family.member`` pairs a criterion reads, in order of appearance."""
    seen: list[tuple[str, str]] = []
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return seen
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            pair = (node.value.id, node.attr)
            if pair not in seen:
                seen.append(pair)
    return seen


def column_alias(column: str) -> str:
    return identifier(column.replace(".", "_").replace("@", "_"))


def group_values(
    frame: pd.DataFrame, columns: list[str], only: set[str] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """{family: {group: per-run values (transformed, NaN where missing)}}, runs in frame order."""
    families: dict[str, tuple[str, Callable[[float], float]]] = {
        column_alias(c): (c, float) for c in columns
    }
    families.update({a: (c, f) for a, (c, f, _) in ALIASES.items()})
    if only is not None:
        families = {k: v for k, v in families.items() if k in only}
    groups = frame["group"].astype(str).to_numpy()
    out: dict[str, dict[str, np.ndarray]] = {}
    for family, (col, fn) in families.items():
        raw = frame[col].to_numpy(dtype=float) if col in frame else np.full(len(frame), np.nan)
        values = np.array([fn(x) if np.isfinite(x) else np.nan for x in raw], dtype=float)
        out[family] = {identifier(g): values[groups == g] for g in dict.fromkeys(groups)}
    return out


def _means(
    values: dict[str, dict[str, np.ndarray]], picks: dict[str, np.ndarray] | None = None
) -> dict[str, dict[str, float | None]]:
    ns: dict[str, dict[str, float | None]] = {}
    for family, groups in values.items():
        ns[family] = {}
        for g, v in groups.items():
            v = v[picks[g]] if picks is not None else v
            v = v[np.isfinite(v)]
            ns[family][g] = float(v.mean()) if v.size else None
    return ns


def group_namespace(
    frame: pd.DataFrame, columns: list[str], only: set[str] | None = None
) -> dict[str, dict[str, float | None]]:
    """{family: {group: mean of the per-run values}} for every alias and column (or ``only``)."""
    return _means(group_values(frame, columns, only))


def effect_namespace(
    terms: list[Any], comparisons: list[Any] | None = None
) -> dict[str, dict[str, float | None]]:
    """effect / effect_lo / effect_hi / p families from the primary metric's factorial terms and,
    in a group design, its comparisons of each group with the reference (the declared test's
    difference, interval and adjusted p; :func:`forgetlab.analysis.stats.adjust`)."""
    ns: dict[str, dict[str, float | None]] = {f: {} for f in EFFECT_FAMILIES}
    for t in terms:
        key = identifier(t.term.replace(":", "_"))
        ns["effect"][key] = t.estimate
        ns["effect_lo"][key] = t.ci[0] if t.ci else None
        ns["effect_hi"][key] = t.ci[1] if t.ci else None
        ns["p"][key] = t.p_corrected
    for c in comparisons or []:
        key = identifier(c.group)
        ns["effect"][key] = c.diff
        ns["effect_lo"][key] = c.ci[0] if c.ci else None
        ns["effect_hi"][key] = c.ci[1] if c.ci else None
        ns["p"][key] = c.p_adjusted
    return ns


@dataclass
class Verdict:
    """A hypothesis, what it evaluated to, and the numbers behind it."""

    id: str
    statement: str
    criterion: str
    verdict: str
    evidence: dict[str, float | None] = field(default_factory=dict)
    support: float | None = None
    note: str | None = None
    untested: str | None = None

    @property
    def label(self) -> str:
        """The verdict as the report shows it, e.g. ``pass, untested: 1 run per group``."""
        return verdict_label(self.verdict, self.untested)


def verdict_label(verdict: str, untested: str | None) -> str:
    return f"{verdict}, untested: {untested}" if untested else verdict


def untested_reason(expr: str, frame: pd.DataFrame) -> str | None:
    """Why a criterion's verdict has no statistical test behind it (None when it has one)."""
    pairs = referenced(expr)
    if any(family in TEST_FAMILIES for family, _ in pairs):
        return None
    sizes = {identifier(g): int(n) for g, n in frame["group"].astype(str).value_counts().items()}
    read = [sizes[member] for _, member in pairs if member in sizes] or list(sizes.values())
    if all(n < 2 for n in read):
        return UNTESTED_ONE_RUN
    return UNTESTED_NO_TEST


def _bootstrap_support(
    expr: str,
    frame: pd.DataFrame,
    columns: list[str],
    extra: dict[str, dict[str, float | None]],
    rng: np.random.Generator,
    n_boot: int,
) -> float | None:
    values = group_values(frame, columns, {family for family, _ in referenced(expr)})
    sizes = {identifier(g): n for g, n in frame["group"].astype(str).value_counts().items()}
    if all(n < 2 for n in sizes.values()):
        return None
    hits = total = 0
    for _ in range(n_boot):
        picks = {g: rng.integers(0, n, n) for g, n in sizes.items()}
        try:
            hits += bool(evaluate(expr, {**_means(values, picks), **extra}))
            total += 1
        except Missing:
            continue
    return hits / total if total else None


def judge(
    hypotheses: list[dict[str, Any]],
    frame: pd.DataFrame,
    columns: list[str],
    effect_terms: list[Any] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    comparisons: list[Any] | None = None,
) -> list[Verdict]:
    """Verdicts of every hypothesis over the finished runs in ``frame``."""
    extra = effect_namespace(effect_terms or [], comparisons)
    ns = {**group_namespace(frame, columns), **extra}
    rng = np.random.default_rng(seed)
    out = []
    for h in hypotheses:
        expr = str(h.get("criterion") or "")
        v = Verdict(str(h.get("id", "?")), str(h.get("statement", "")), expr, "undetermined")
        if not expr:
            v.note = "no criterion given"
            out.append(v)
            continue
        try:
            v.evidence = {f"{a}.{b}": ns.get(a, {}).get(b) for a, b in referenced(expr) if a in ns}
            v.verdict = "pass" if evaluate(expr, ns) else "fail"
            v.untested = untested_reason(expr, frame)
            v.support = _bootstrap_support(expr, frame, columns, extra, rng, n_boot)
        except Missing as e:
            v.note = f"missing value: {e}"
        except HypothesisError as e:
            v.note = str(e)
        out.append(v)
    return out

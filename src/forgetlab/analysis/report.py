"""The experiment record (docs/memory_ffn.md): analysis.json, report.md, report.html, plots/.

Sections, in order: summary; goal and hypotheses; pre-registration (hash, change flag); configuration
(factors, groups, shared config, per-group differences); environment and git state; command lines;
execution (times, per-run status); per budget: metrics, intervals, stability, comparison against the
reference, effects, marginal gains, timing/memory/parameters, plots; generation samples; hypothesis
verdicts; conclusions; definitions. Every number comes from :func:`analyse`; nothing is hand-written.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from forgetlab.analysis import plots
from forgetlab.analysis.analyse import analyse, jsonable
from forgetlab.analysis.columns import PHASES
from forgetlab.analysis.doc import Doc
from forgetlab.analysis.hypotheses import ALIASES, verdict_label
from forgetlab.analysis.load import Experiment, load_experiment
from forgetlab.analysis.registry import REPORTED, SECONDARY
from forgetlab.atomic import atomic_write_json, atomic_write_text

ENV_KEYS = (
    "forgetlab",
    "python",
    "torch",
    "numpy",
    "platform",
    "cpu",
    "threads",
    "device",
    "gpu",
    "cuda",
)


def fmt(x: Any) -> str:
    """Numbers to 4 significant digits; None as an em dash-free 'n/a'."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return f"{x:.4g}"


def ci(pair: Any) -> str:
    return "n/a (n < 2)" if not pair else f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def _stat(a: dict[str, Any], group: str, metric: str) -> dict[str, Any] | None:
    return next(
        (s for s in a["group_stats"] if s["group"] == group and s["metric"] == metric), None
    )


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d) if isinstance(d, list) else str(d)}


def section_header(doc: Doc, exp: Experiment, an: dict[str, Any]) -> None:
    e, s = an["experiment"], an["settings"]
    counts = ", ".join(f"{v} {k}" for k, v in an["status_counts"].items())
    doc.p(
        f"Design `{e['design']}`, scale `{e['scale']}`, {len(an['runs'])} runs ({counts}); "
        f"primary metric `{s['primary']}` ({'lower' if s['primary_lower_is_better'] else 'higher'} "
        f"is better); reference group `{e['reference']}`. Written {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}."
    )
    spec = exp.meta.get("spec") or {}
    doc.h(2, "Goal and hypotheses")
    goal = spec.get("goal") or spec.get("description") or spec.get("question")
    doc.p(str(goal) if goal else "The spec states no goal (`goal` / `description`).")
    hyps = (an["preregistration"]["block"] or {}).get("hypotheses") or []
    doc.table(
        ["id", "statement", "pass criterion"],
        [[h.get("id"), h.get("statement"), f"`{h.get('criterion')}`"] for h in hyps],
    )


def section_glance(doc: Doc, an: dict[str, Any]) -> None:
    """The verdicts first (details and evidence follow in each budget's section)."""
    lines = []
    for budget, a in an["budgets"].items():
        where = f" [{budget}]" if len(an["budgets"]) > 1 else ""
        lines += [
            f"{v['id']}{where}: **{verdict_label(v['verdict'], v.get('untested'))}**: "
            f"{v['statement']}"
            for v in a["hypotheses"]
        ]
        ms = a["conclusions"].get("minimal_set") or {}
        if "on" in ms:
            lines.append(f"Minimal mechanism set{where}: {', '.join(ms['on']) or 'none'}")
    if lines:
        doc.h(2, "At a glance")
        doc.bullets(lines)


PREREG_STATUS = {
    "unchanged": "unchanged since registration",
    "changed": "CHANGED after registration",
    "added": "ADDED after the first run (not registered)",
}


def section_prereg(doc: Doc, an: dict[str, Any]) -> None:
    pr = an["preregistration"]
    doc.h(2, "Pre-registration")
    if pr["status"] == "absent":
        doc.p("No pre-registration block: every test in this report is exploratory.")
        return
    if pr["status"] == "added":
        doc.warn(
            "the pre-registration block was ADDED after the first run started (no block was "
            f"registered then; its hash now `{pr['sha256_now']}`). It registers nothing: treat "
            "the tests as exploratory."
        )
    elif pr["changed"]:
        doc.warn(
            f"the pre-registration block CHANGED after the first run started: hash at registration "
            f"`{pr['sha256']}`, now `{pr['sha256_now']}`. Treat the tests as exploratory."
        )
    b = pr["block"]
    doc.table(
        ["field", "value"],
        [
            ["primary metric", f"`{b.get('primary_metric')}`"],
            ["test", b.get("test")],
            ["alpha", b.get("alpha")],
            ["correction", b.get("correction")],
            ["sha256 (at the first run)", f"`{pr['sha256']}`" if pr["sha256"] else "none"],
            ["registered at", pr["registered_at"]],
            ["status", PREREG_STATUS[pr["status"]]],
        ],
    )


def section_config(doc: Doc, exp: Experiment, an: dict[str, Any]) -> None:
    doc.h(2, "Configuration")
    factors = an["experiment"]["factors"]
    doc.table(
        ["factor", "levels", "coding"],
        [[f, ", ".join(lv), "-1 / +1" if len(lv) == 2 else "levels"] for f, lv in factors.items()],
    )
    first = next(iter(an["budgets"].values()), None)
    if first:
        doc.table(
            ["group", "levels", "finished / planned", "seeds", "orders"],
            [
                [
                    g["group"],
                    ", ".join(f"{k}={v}" for k, v in g["levels"].items()) or "-",
                    f"{g['n_finished']} / {g['n_planned']}",
                    g["seeds"],
                    "; ".join(g["orders"]),
                ]
                for g in first["groups"]
            ],
        )
    configs = {r: _flatten(rec.get("config") or {}) for r, rec in exp.records.items()}
    if not configs:
        return
    keys = sorted(set().union(*configs.values()))
    shared = [k for k in keys if len({c.get(k) for c in configs.values()}) == 1]
    varying = [k for k in keys if k not in shared and not k.endswith(("name", "seed"))]
    doc.h(3, "Shared run configuration")
    doc.table(["key", "value"], [[k, next(iter(configs.values())).get(k)] for k in shared])
    group_of = dict(zip(exp.results["run_id"], exp.results["group"], strict=True))
    groups = list(dict.fromkeys(group_of[r] for r in configs if r in group_of))
    if varying and groups:
        doc.h(3, "Per-group differences")
        rows = []
        for k in varying:
            vals = [{configs[r].get(k) for r in configs if group_of.get(r) == g} for g in groups]
            rows.append([k, *[", ".join(sorted(str(x) for x in v)) for v in vals]])
        doc.table(["key", *groups], rows)


def section_environment(doc: Doc, exp: Experiment) -> None:
    doc.h(2, "Environment")
    env = exp.meta.get("env") or next(
        (r.get("env") for r in exp.records.values() if r.get("env")), {}
    )
    git = env.get("git") or {}
    rows = [[k, env.get(k)] for k in ENV_KEYS if env.get(k) is not None]
    rows += [["git commit", f"`{git.get('commit')}`"], ["tree dirty", git.get("dirty")]]
    for pkg in ("scipy", "statsmodels", "pandas", "matplotlib"):
        try:
            rows.append([f"{pkg} (report)", metadata.version(pkg)])
        except metadata.PackageNotFoundError:
            continue
    doc.table(["item", "value"], rows)
    if git.get("dirty"):
        doc.warn("the working tree was dirty: the commit alone does not reproduce these runs.")
    doc.h(2, "Command lines")
    cmds = [shlex.join(map(str, c)) for c in exp.meta.get("commands") or []]
    doc.code("\n".join(cmds) if cmds else "(no command recorded)")


def section_execution(doc: Doc, an: dict[str, Any]) -> None:
    e = an["experiment"]
    doc.h(2, "Execution")
    doc.table(["started", "finished", "duration"], [[e["started"], e["finished"], _duration(e)]])
    doc.table(
        ["run", "group", "seed", "order", "budget", "status", "error"],
        [
            [
                r["run_id"],
                r["group"],
                r["seed"],
                r["order"],
                r["budget"],
                r["status"],
                (r["error"] or "").splitlines()[0][:120] if r["error"] else "",
            ]
            for r in an["runs"]
        ],
    )
    stopped = [r for r in an["runs"] if r["status"] in ("failed", "corrupt")]
    if stopped:
        doc.h(3, "Failed and corrupt runs (left out of every statistic)")
        doc.bullets(
            [
                f"`{r['run_id']}` ({r['group']}, seed {r['seed']}): **{r['status']}**: "
                f"{(r['error'] or 'no error recorded').splitlines()[0]}"
                for r in stopped
            ]
        )


def _duration(e: dict[str, Any]) -> str:
    try:
        d = datetime.fromisoformat(e["finished"]) - datetime.fromisoformat(e["started"])
    except (TypeError, ValueError):
        return "n/a"
    return str(d).split(".")[0]


def section_results(doc: Doc, a: dict[str, Any], an: dict[str, Any], figs: Path, tag: str) -> None:
    primary = an["settings"]["primary"]
    present = {s["metric"] for s in a["group_stats"]}
    declared = [*an["settings"].get("co_primary", []), *an["settings"].get("secondary", [])]
    metrics = [m for m in (primary, *declared, *REPORTED) if m in present]
    metrics = list(dict.fromkeys(metrics))
    groups = [g["group"] for g in a["groups"] if g["n_finished"]]
    doc.h(3, "Metrics per group (mean ± sd over finished runs)")
    rows = []
    for g in groups:
        cells = []
        for m in metrics:
            s = _stat(a, g, m)
            cells.append(
                "n/a" if not s or s["mean"] is None else f"{fmt(s['mean'])} ± {fmt(s['sd'])}"
            )
        rows.append([g, _stat(a, g, primary)["n"] if _stat(a, g, primary) else 0, *cells])
    doc.table(["group", "n", *[f"`{m}`" for m in metrics]], rows)
    doc.h(3, f"Primary metric `{primary}`: intervals and stability")
    doc.table(
        [
            "group",
            "n",
            "mean",
            "sd",
            "95% t CI",
            "95% bootstrap CI",
            "seed variance",
            "order variance",
        ],
        [
            [
                g,
                s["n"],
                fmt(s["mean"]),
                fmt(s["sd"]),
                ci(s["t_ci"]),
                ci(s["boot_ci"]),
                fmt(s["seed_var"]),
                fmt(s["order_var"]),
            ]
            for g in groups
            if (s := _stat(a, g, primary))
        ],
    )
    doc.image(
        plots.plot_group_metric(a["group_stats"], primary, figs, f"{tag}primary"),
        f"{primary} per group, 95% t intervals",
    )
    ref = an["experiment"]["reference"]
    comps = {(c["group"], c["metric"]): c for c in a["reference_comparison"]}
    if not comps:
        return
    doc.h(3, f"Against the reference group `{ref}` (difference of means, relative)")
    rows = []
    for g in groups:
        cells = [comps.get((g, m)) for m in metrics]
        if any(cells):
            rows.append([g, *[_diff(c) for c in cells]])
    doc.table(["group", *[f"`{m}`" for m in metrics]], rows)
    doc.table(
        ["group", f"Δ `{primary}`", "95% Welch CI", "p (Welch, raw)"],
        [
            [g, fmt(c["diff"]), ci(c["ci"]), fmt(c["p"])]
            for g in groups
            if (c := comps.get((g, primary)))
        ],
    )


def _diff(c: dict[str, Any] | None) -> str:
    if not c or c["diff"] is None:
        return "n/a"
    rel = "" if c["rel"] is None else f" ({100 * c['rel']:+.1f}%)"
    return f"{fmt(c['diff'])}{rel}"


def section_effects(
    doc: Doc,
    exp: Experiment,
    frame: Any,
    a: dict[str, Any],
    an: dict[str, Any],
    figs: Path,
    tag: str,
) -> None:
    primary = an["settings"]["primary"]
    fit = a["factorial"].get(primary)
    if not fit or not fit["factors"]:
        return
    doc.h(3, f"Factorial effects on `{primary}` (pre-registered test)")
    doc.p(
        "Effect = mean(+1) − mean(−1) = 2 × OLS coefficient under ±1 effect coding; model with all "
        f"interactions{', order as a block' if fit['blocked'] else ''}; type III ANOVA; "
        f"p corrected with `{fit['correction']}` across the factorial terms."
    )
    if not fit["testable"]:
        doc.warn(
            f"no significance test: {fit['reason']}. Estimates only, without intervals or p-values."
        )
    doc.table(
        ["term", "effect", "95% CI", "F", "p (raw)", f"p ({fit['correction']})", "partial η²"],
        [
            [
                t["term"],
                fmt(t["estimate"]),
                ci(t["ci"]) if fit["testable"] else "n/a",
                fmt(t["F"]),
                fmt(t["p"]),
                fmt(t["p_corrected"]),
                fmt(t["partial_eta_sq"]),
            ]
            for t in fit["terms"]
        ],
    )
    if fit["block"]:
        b = fit["block"]
        doc.p(
            f"Order block: F = {fmt(b['F'])}, p = {fmt(b['p'])}, partial η² = {fmt(b['partial_eta_sq'])}."
        )
    doc.image(
        plots.plot_effects(fit, figs, f"{tag}effects"),
        f"Effect decomposition of {primary}: main effects and interactions, 95% intervals",
    )
    doc.image(
        plots.plot_interactions(frame, exp.factors, primary, figs, f"{tag}interactions"),
        f"Interaction plots of {primary}",
    )
    rows = []
    for m in SECONDARY:
        f = a["factorial"].get(m)
        for t in (f or {}).get("terms", []):
            rows.append(
                [
                    f"`{m}`",
                    t["term"],
                    fmt(t["estimate"]),
                    ci(t["ci"]) if f["testable"] else "n/a",
                    fmt(t["p_corrected"]),
                ]
            )
    if rows:
        doc.h(3, "Secondary metrics (exploratory, corrected within each metric)")
        doc.table(["metric", "term", "effect", "95% CI", "p (corrected)"], rows)


def section_gains_and_perf(
    doc: Doc, a: dict[str, Any], an: dict[str, Any], figs: Path, tag: str
) -> None:
    primary = an["settings"]["primary"]
    if a["marginal_gains"]:
        doc.h(3, "Marginal gains (primary metric against extra training FLOPs)")
        doc.table(
            [
                "factor",
                "level",
                "n",
                "mean",
                "training FLOPs",
                "gain",
                "extra FLOPs",
                "gain / extra FLOP",
            ],
            [
                [
                    p["factor"],
                    p["level"],
                    p["n"],
                    fmt(p["value"]),
                    fmt(p["flops"]),
                    fmt(p["gain"]),
                    fmt(p["extra_flops"]),
                    fmt(p["marginal_gain_per_flop"]),
                ]
                for pts in a["marginal_gains"].values()
                for p in pts
            ],
        )
        doc.image(
            plots.plot_marginal_gains(a["marginal_gains"], primary, figs, f"{tag}gains"),
            "Marginal-gain curves",
        )
    doc.h(3, "Timing, memory and parameters (means per group)")
    perf = a["performance"]
    doc.table(
        [
            "group",
            *[f"{k} s" for k in PHASES],
            "tokens/s",
            "MFU",
            "peak RSS MiB",
            "params",
            "trainable",
        ],
        [
            [
                p["group"],
                *[fmt(p["phase_s"][k]) for k in PHASES],
                fmt(p["tokens_per_s"]),
                fmt(p["mfu"]),
                fmt(p["peak_rss_bytes"] / 2**20 if p["peak_rss_bytes"] else None),
                fmt(p["params_total"]),
                fmt(p["params_trainable"]),
            ]
            for p in perf
        ],
    )
    doc.image(
        plots.plot_performance(perf, figs, f"{tag}performance"),
        "Parameters, training speed and peak memory per group",
    )


def section_verdicts(doc: Doc, a: dict[str, Any]) -> None:
    if a["hypotheses"]:
        doc.h(3, "Hypothesis verdicts")
        doc.table(
            ["id", "criterion", "verdict", "evidence (group means)", "bootstrap support", "note"],
            [
                [
                    v["id"],
                    f"`{v['criterion']}`",
                    verdict_label(v["verdict"], v.get("untested")),
                    "; ".join(f"{k} = {fmt(x)}" for k, x in v["evidence"].items()),
                    "n/a" if v["support"] is None else f"{100 * v['support']:.0f}%",
                    v["note"] or "",
                ]
                for v in a["hypotheses"]
            ],
        )
    doc.h(3, "Conclusions")
    statements = a["conclusions"]["statements"]
    doc.bullets(statements or ["No conclusion can be drawn from these runs."])


def section_samples(doc: Doc, exp: Experiment) -> None:
    first = exp.results.drop_duplicates("group")["run_id"]
    samples = [
        (r, exp.records[r]["samples"]) for r in first if exp.records.get(r, {}).get("samples")
    ]
    if not samples:
        return
    doc.h(2, "Generation samples")
    for rid, items in samples:
        doc.h(3, f"run `{rid}` (first run of its group)")
        doc.code("\n\n".join(_sample_text(s) for s in items[:3]))


def _sample_text(s: Any) -> str:
    if isinstance(s, dict):
        return f"prompt: {s.get('prompt', '')}\noutput: {s.get('completion', s.get('output', ''))}"
    return str(s)


def section_definitions(doc: Doc) -> None:
    doc.h(2, "Definitions")
    doc.bullets(
        [
            "Scores are higher-is-better (accuracy, negated loss); forgetting is positive when performance dropped.",
            "Effect coding: a factor's first listed level is −1, the second +1; reported effect = mean(+1) − mean(−1) = 2β.",
            "Super-additive interaction: significant with a benefit (sign-adjusted so positive = better) above zero: "
            "the factors together beat the sum of their single effects; sub-additive: below zero.",
            "Minimal mechanism set: fewest factors 'on' whose combination is not significantly worse than the best "
            "(Welch t-tests against the best, corrected).",
            "Seed variance: pooled within-order variance over seeds; order variance: variance of per-order means.",
        ]
    )
    doc.h(3, "Hypothesis namespace")
    doc.p(
        "Criteria are expressions over `<alias>.<group>` (group mean), e.g. `abs(ppl.C - ppl.B) / ppl.B < 0.05`; "
        "every results column is also an alias with `.`/`@` replaced by `_`; `effect.T`, `effect_lo.T`, "
        "`effect_hi.T`, `p.T` give the primary metric's factorial terms (`T:W` → `T_W`). Allowed: numbers, "
        "arithmetic, comparisons, and/or/not, abs/min/max."
    )
    doc.table(
        ["alias", "column", "meaning"],
        [[f"`{a}`", f"`{c}`", d] for a, (c, _, d) in ALIASES.items()],
    )


def build(exp: Experiment, an: dict[str, Any], figs: Path) -> Doc:
    """The report document (plots are drawn into ``figs`` as it is built)."""
    doc = Doc(f"Experiment record: {exp.name}")
    section_header(doc, exp, an)
    section_glance(doc, an)
    section_prereg(doc, an)
    section_config(doc, exp, an)
    section_environment(doc, exp)
    section_execution(doc, an)
    finished = exp.finished()
    for budget, a in an["budgets"].items():
        tag = f"{budget}-" if len(an["budgets"]) > 1 else ""
        frame = finished[finished["budget"] == budget]
        doc.h(2, f"Results, budget `{budget}`" if tag else "Results")
        section_results(doc, a, an, figs, tag)
        section_effects(doc, exp, frame, a, an, figs, tag)
        section_gains_and_perf(doc, a, an, figs, tag)
        doc.image(
            plots.plot_r_heatmaps(exp, frame, figs, f"{tag}r_matrices"),
            "Mean loss R matrix per group (rows: after each stage)",
        )
        doc.image(
            plots.plot_learning_curves(exp, frame, figs, f"{tag}learning_curves"),
            "Training loss per group (mean over runs)",
        )
        section_verdicts(doc, a)
    if not an["budgets"]:
        doc.warn("no finished run: nothing to analyse yet.")
    section_samples(doc, exp)
    section_definitions(doc)
    return doc


def write_report(exp_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Analyse EXP_DIR and write analysis.json, report.md, report.html and plots/ into it."""
    exp = load_experiment(exp_dir)
    an = jsonable(analyse(exp, seed=seed))
    figs = exp.root / "plots"
    doc = build(exp, an, figs)
    paths = {
        "analysis": exp.root / "analysis.json",
        "markdown": exp.root / "report.md",
        "html": exp.root / "report.html",
        "plots": figs,
    }
    atomic_write_json(paths["analysis"], an)
    atomic_write_text(paths["markdown"], doc.markdown(exp.root))
    atomic_write_text(paths["html"], doc.html())
    return paths

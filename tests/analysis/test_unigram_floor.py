"""The unigram floor: a just-learned loss less than UNIGRAM_MARGIN below the domain's unigram loss
is named, in `forgetlab show` and in the report; a clear margin, a missing baseline or an unfinished
stage is not."""

from __future__ import annotations

import io

from rich.console import Console
from synthetic_experiment import DOMAINS, write_experiment

from forgetlab.analysis.doc import Doc
from forgetlab.analysis.floor import UNIGRAM_MARGIN, shortfalls
from forgetlab.analysis.load import load_experiment
from forgetlab.analysis.report import unigram_floor_block
from forgetlab.cli.render import print_run_summary


def _record(just_learned: list[float], unigram: list[float] | None) -> dict:
    """A finished 3-domain run.json: loss 7.6 untrained, ``just_learned`` on the diagonal."""
    t = len(just_learned)
    loss = [[7.6] * t]
    for i in range(1, t + 1):
        loss.append([just_learned[j] + 0.3 * (i - 1 - j) if j < i else 7.6 for j in range(t)])
    acc = [[0.1] * t for _ in loss]
    rec = {
        "domains": DOMAINS[:t],
        "R": {"loss": loss, "bpb": loss, "accuracy": acc},
        "metrics": {},
        "precision": "bf16",
        "timing": {"throughput": {"train_tokens_per_s": 1.0, "peak_flops": 1.0, "peak_source": "x"}},
    }
    if unigram is not None:
        rec["unigram"] = {"loss": unigram, "bpb": unigram, "accuracy": [0.05] * t}
    return rec


def test_only_domains_less_than_the_margin_below_unigram_are_named():
    rec = _record([5.9, 5.0, 4.0], [6.1, 5.0 + UNIGRAM_MARGIN, 4.0 - 0.1])
    found = shortfalls(rec)
    assert [s.domain for s in found] == ["code", "medical"]
    assert abs(found[0].margin - 0.2) < 1e-9 and found[1].margin < 0
    assert "only 0.20 nats below its unigram baseline 6.100" in found[0].sentence()
    assert "0.10 nats above" in found[1].sentence()


def test_no_baseline_or_unfinished_stage_is_not_judged():
    assert shortfalls(_record([5.9, 5.0, 4.0], None)) == []
    rec = _record([5.9, 5.0, 4.0], [6.0, 6.0, 6.0])
    rec["R"]["loss"] = rec["R"]["loss"][:2]  # stopped after stage 1: only code was learned
    assert [s.domain for s in shortfalls(rec)] == ["code"]


def test_a_joint_run_is_judged_on_its_final_row_only():
    rec = _record([6.0, 6.0, 6.0], [6.1, 6.1, 6.1])  # near unigram after each mixture stage
    rec["config"] = {"train": {"joint": "proportional"}}
    rec["R"]["loss"][-1] = [5.0, 5.9, 5.0]  # the end of the joint run: only math near unigram
    found = shortfalls(rec)
    assert [s.domain for s in found] == ["math"]
    assert "the loss at the end of the joint run, 5.900" in found[0].sentence()
    rec["R"]["loss"] = rec["R"]["loss"][:3]  # not finished: nothing to judge yet
    assert shortfalls(rec) == []


def _shown(rec: dict) -> str:
    out = io.StringIO()
    print_run_summary(rec, Console(file=out, width=200, no_color=True))
    return out.getvalue()


def test_show_warns_in_words_about_a_domain_near_its_unigram_loss():
    text = _shown(_record([5.9, 4.0, 4.0], [6.1, 6.0, 6.0]))
    assert "warning: code: the loss right after learning it, 5.900, is only 0.20 nats below" in text
    assert "math:" not in text
    assert "warning" not in _shown(_record([5.0, 4.0, 4.0], [6.1, 6.0, 6.0]))


def test_report_names_the_group_and_domain_near_unigram(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, fail_one=False))
    for rid, rec in exp.records.items():  # just-learned losses sit near 3.0 in every run
        first = rec["domains"][0]
        near = rid.startswith("T0W0R0") and first == "code"
        rec["unigram"] = {"loss": [3.2 if near and d == "code" else 5.0 for d in rec["domains"]]}
    doc = Doc("t")
    unigram_floor_block(doc, exp)
    text = doc.markdown(tmp_path)
    assert "less than 0.5 nats below their domain's unigram baseline" in text
    assert "`T0W0R0`: code in 2 of 4 runs" in text  # the forward order's 2 seeds
    assert text.count("`T0W0R0`") == 1 and "`T1W1R1`" not in text

    for rec in exp.records.values():
        rec["unigram"] = {"loss": [5.0] * len(rec["domains"])}
    clear = Doc("t")
    unigram_floor_block(clear, exp)
    assert "at least 0.5 nats below" in clear.markdown(tmp_path)

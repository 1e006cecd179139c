"""The class-incremental scenario end to end: iCaRL against fine-tune, ER and LwF."""

import pytest
import torch

from forgetlab.data import open_stream
from forgetlab.experiments.class_incremental import ClassIncrementalConfig, run_class_incremental


def test_class_incremental_scenario_end_to_end(fixture_data):
    torch.set_num_threads(1)
    stream = open_stream(fixture_data.domains, fixture_data.tokenizer, fixture_data.cache_dir)
    cfg = ClassIncrementalConfig(arrivals=[2, 1, 1, 1], steps=20, train_windows=32,
                                 test_windows=16, memory=24, seed=1)
    results = {m: run_class_incremental(m, stream, cfg) for m in ("finetune", "er", "lwf", "icarl")}
    for r in results.values():
        assert len(r["accuracy"]) == 4 and all(0 <= a <= 1 for a in r["accuracy"])
        assert r["average_incremental_accuracy"] == pytest.approx(sum(r["accuracy"]) / 4)
        assert r["classes"] == fixture_data.domains
    assert results["icarl"]["memory"] == results["er"]["memory"] == 5 * (24 // 5)
    # fine-tune on the last class alone predicts only that class: 1 of 5 classes right
    assert results["finetune"]["accuracy"][-1] == pytest.approx(0.2)
    aia = {m: r["average_incremental_accuracy"] for m, r in results.items()}
    assert aia["icarl"] > aia["er"] > aia["finetune"]


def test_scenario_refuses_more_classes_than_domains(fixture_data):
    stream = open_stream(fixture_data.domains[:3], fixture_data.tokenizer, fixture_data.cache_dir)
    with pytest.raises(ValueError, match="need 6 classes"):
        run_class_incremental("icarl", stream, ClassIncrementalConfig())

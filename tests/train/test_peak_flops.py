"""The peak FLOP/s a run's MFU is measured against: the CPU peak stored by ``forgetlab bench peak``
for this CPU, thread count and precision, else a matmul peak measured when the run starts."""

from __future__ import annotations

import torch

from forgetlab.train.flops import peak_flops, save_cpu_peak

CPU = torch.device("cpu")


def test_a_stored_peak_is_read_for_its_thread_count_and_one_is_measured_otherwise(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FORGETLAB_DATA", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        measured, source = peak_flops(CPU, "fp32")
        assert source == "measured at run start" and measured > 1e8  # any CPU does 0.1 GFLOP/s
        save_cpu_peak("fp32", 1.5 * measured)
        assert peak_flops(CPU, "fp32") == (1.5 * measured, "bench peak")
        torch.set_num_threads(2)  # another key: measured again, not read
        assert peak_flops(CPU, "fp32")[1] == "measured at run start"
    finally:
        torch.set_num_threads(threads)

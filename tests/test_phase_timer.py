"""The training step's phase timer (prewrite.lightning_module.PhaseTimer)."""

import pytest

from prewrite.lightning_module import PhaseTimer


def test_phase_timer_records_each_phase_and_the_whole(monkeypatch):
    clock = iter([10.0, 10.5, 12.5, 13.0, 13.25, 14.0])
    monkeypatch.setattr("prewrite.lightning_module.time.perf_counter", lambda: next(clock))
    timer = PhaseTimer()  # 10.0
    with timer("rollout"):  # 10.5 .. 12.5
        pass
    with pytest.raises(RuntimeError), timer("update"):  # 13.0 .. 13.25: a phase that raises still gets its time
        raise RuntimeError
    assert timer.seconds == {"rollout": 2.0, "update": 0.25}
    assert timer.elapsed() == 4.0  # 14.0 - 10.0

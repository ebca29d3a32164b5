"""benchmarks/timeline.py: a sweep's wall time split from its trials' spans, against hand-made timelines."""

import pytest

from benchmarks import timeline
from benchmarks.timeline import Command, Span


def test_longest_first_list_scheduling_and_its_lower_bound():
    assert timeline.lpt_schedule_s([2.0, 2.0, 1.0, 1.0, 1.0, 1.0], 2) == 4.0
    assert timeline.lpt_schedule_s([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 7.0  # LPT's known 7/6 case: 6 is possible
    assert timeline.lpt_schedule_s([5.0, 1.0], 4) == 5.0
    assert timeline.lpt_schedule_s([1.0] * 9, 1) == 9.0


def test_a_sweep_split_into_before_training_gaps_and_after():
    """Two slots from t=100: the command starts at 100, trials train from 103 to 110, it ends at 111.5.
    Slot A: trial 1 103-107, trial 3 107.5-110; slot B: trial 2 104-106 (waits 1 s to start),
    then idles 4 s at the end."""
    command = Command(started_at_s=100.0, wall_s=11.5, exit_code=0, marks={"cluster": 2.0, "summary": 10.2})
    spans = [Span(1, 102.0, 103.0, 107.0), Span(2, 103.5, 104.0, 106.0), Span(3, 107.2, 107.5, 110.0)]
    split = timeline.split(command, spans, 2)
    assert split["before_first_epoch_s"] == 3.0 and split["after_last_epoch_s"] == 1.5
    assert split["trials_span_s"] == 7.0 and split["sum_trial_s"] == 8.5 and split["longest_trial_s"] == 4.0
    assert split["lpt_schedule_s"] == 4.5  # 4 | 2 + 2.5
    assert split["lower_bound_s"] == 4.25
    assert split["between_trials_s"] == 0.5 and split["waiting_to_start_s"] == 1.0 and split["idle_at_end_s"] == 4.0
    assert split["trial_setup_s"] == pytest.approx(1.0 + 0.5 + 0.3)
    assert split["target_s"] == pytest.approx(1.25 * 4.5 + 2.0) and split["within_target"] is False
    assert split["sum_trial_with_setup_s"] == pytest.approx(5.0 + 2.5 + 2.8)
    assert split["start_order"] == [1, 2, 3] and split["lanes"] == 2
    assert split["trial_s"] == {1: 4.0, 2: 2.0, 3: 2.5}
    assert split["marks"] == {"cluster": 2.0, "first_trial_called": 2.0, "first_epoch": 3.0, "last_report": 10.0,
                              "summary": 10.2}


def test_more_trials_at_once_than_slots_are_split_on_more_lanes():
    spans = [Span(n, 0.0, 1.0, 5.0) for n in (1, 2, 3)]
    assert len(timeline.lanes(spans, 2)) == 3


def test_slots_follow_what_a_trial_asks_of_the_cluster_line():
    command = Command(0.0, 1.0, 0, lines=["cluster: local Ray: 1 node(s), 16 CPUs, 1 GPUs\n"])
    assert timeline.slots(command, {"cpu": 1.0, "gpu": 1.0}) == 1
    assert timeline.slots(command, {"cpu": 1.0, "gpu": 0.0}) == 16
    assert timeline.slots(command, {"cpu": 3.0, "gpu": 0.0}) == 5

"""Segment-to-clip arithmetic at its boundaries."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from videobert.shards.clips import ClipConfig, frame_index, frame_range, plan_clips, too_short_reason


def owned(start: float, end: float, fps: float) -> list[int]:
    """The definition, by brute force in exact arithmetic on the times as written (decimals, as a
    transcript gives them): frames k >= 0 with start <= k / fps < end."""
    start_, end_, fps_ = (Fraction(repr(float(x))) for x in (start, end, fps))
    candidates = range(max(0, int(start * fps) - 2), max(0, int(end * fps) + 3))
    return [k for k in candidates if start_ <= k / fps_ < end_]


@pytest.mark.parametrize(
    "start, end, fps, expected",
    [
        (1.5, 3.0, 20, (30, 60)),  # both boundaries on frames: start included, end excluded
        (1.5001, 3.0001, 20, (31, 61)),  # just after a frame: that frame is not owned / is owned
        (0.1, 0.2, 30, (3, 6)),  # 0.1 * 30 is 3.0000000000000004 in floating point: still frame 3
        (0.0, 0.01, 20, (0, 1)),  # shorter than a frame but covering frame 0
        (0.01, 0.04, 20, (1, 1)),  # between two frames: owns none
        (-2.0, 0.5, 10, (0, 5)),  # before the start of the video
    ],
)
def test_frame_range_boundaries(start, end, fps, expected):
    assert frame_range(start, end, fps) == expected
    first, stop = expected
    assert list(range(first, stop)) == owned(start, end, fps)


def test_frame_range_matches_definition_on_random_segments():
    rng = random.Random(7)
    for _ in range(1000):
        fps = rng.choice([8, 10, 15, 20, 25, 29.97, 30])
        start = round(rng.uniform(0, 50), rng.choice([1, 2, 3]))
        end = round(start + rng.uniform(0, 5), rng.choice([1, 2, 3]))
        first, stop = frame_range(start, end, fps)
        assert list(range(first, stop)) == owned(start, end, fps), (start, end, fps)


def test_adjacent_segments_share_no_frame_and_leave_no_gap():
    fps, times = 20, [0.0, 1.23, 2.5, 2.51, 4.0]
    ranges = [frame_range(a, b, fps) for a, b in zip(times, times[1:])]
    assert [r[1] for r in ranges[:-1]] == [r[0] for r in ranges[1:]]
    assert frame_index(times[-1], fps) == ranges[-1][1]


@pytest.mark.parametrize(
    "frames, clip_len, min_last, expected",
    [
        (60, 30, None, (2, 60, 0)),  # whole clips only
        (75, 30, None, (3, 75, 15)),  # remainder 15 = half a clip: kept, padded by 15
        (74, 30, None, (2, 60, 0)),  # remainder 14 < 15: dropped
        (15, 30, None, (1, 15, 15)),  # one half clip alone is a sample
        (7, 15, None, None),  # half of 15 rounds up to 8: 7 frames are too few
        (8, 15, None, (1, 8, 7)),
        (59, 30, 30, (1, 30, 0)),  # min_last = clip_len: full clips only
        (31, 30, 1, (2, 31, 29)),  # min_last = 1: any remainder is padded
        (0, 30, None, None),
    ],
)
def test_plan_clips_trailing_rule(frames, clip_len, min_last, expected):
    config = ClipConfig(clip_len=clip_len, min_last_clip=min_last)
    plan = plan_clips(100, 100 + frames, config)
    if expected is None:
        assert plan is None
        return
    n_clips, n_frames, padded = expected
    assert (plan.n_clips, plan.n_frames, plan.padded_frames) == expected
    assert plan.first_frame == 100 and plan.stop_frame == 100 + n_frames
    assert n_frames + padded == n_clips * clip_len


def test_default_min_last_clip_is_half_a_clip_rounded_up():
    assert ClipConfig(clip_len=30).min_last == 15
    assert ClipConfig(clip_len=15).min_last == 8
    assert ClipConfig(clip_len=1).min_last == 1


def test_too_short_reason_names_the_numbers():
    reason = too_short_reason(10, 16, 20.0, ClipConfig(clip_len=30))
    assert "6 frames at 20 fps, fewer than the 15 that make a clip (clips of 30 frames" in reason


@pytest.mark.parametrize("kwargs", [{"clip_len": 0}, {"clip_len": 30, "min_last_clip": 0}, {"clip_len": 30, "min_last_clip": 31}])
def test_clip_config_rejects_impossible_values(kwargs):
    with pytest.raises(ValueError, match="clip"):
        ClipConfig(**kwargs)

"""Segment-to-clip arithmetic: which decoded frames a caption segment owns, and how they become clips.

Pure functions on numbers; no decoding happens here.

Frames. Frame ``k`` of a video decoded at ``fps`` has timestamp ``k / fps`` seconds. A segment
``[start, end)`` owns the frames with ``start <= k / fps < end``: the first is ``ceil(start * fps)``
and the one after the last is ``ceil(end * fps)``. Products are rounded to a millionth of a frame
before ``ceil`` so that float noise (``0.1 * 30 = 3.0000000000000004``) cannot move a boundary by a
whole frame. Adjacent segments (one's end is the next one's start) therefore share no frame.

Clips. A segment's frames are cut, from its first frame on, into clips of ``clip_len`` frames.
The trailing partial clip (the ``remainder`` frames after the last full clip) follows one rule:

* ``remainder >= min_last_clip``: the clip is kept and filled up to ``clip_len`` by repeating its last
  frame (the sample's metadata records how many frames were repeated, ``extra["padded_frames"]``);
* ``remainder < min_last_clip``: those frames are dropped (they belong to no sample).

``min_last_clip`` defaults to half a clip rounded up (15 of 30 frames, 8 of 15); ``min_last_clip =
clip_len`` keeps full clips only, ``min_last_clip = 1`` pads every remainder. A segment with no full
clip and fewer than ``min_last_clip`` frames yields no clip: it is skipped, with the reason given by
``too_short_reason``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_FRAME_ROUNDING = 6  # decimal places of a frame kept before ceil(): absorbs float noise only


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """How a segment's frames become clips."""

    clip_len: int = 30
    """Frames per clip (the paper: 30 frames = 1.5 s at 20 fps)."""
    min_last_clip: int | None = None
    """Least frames a trailing partial clip needs to be kept (padded); None: half a clip, rounded up."""

    def __post_init__(self) -> None:
        if self.clip_len < 1:
            raise ValueError(f"clip length must be at least 1 frame, got {self.clip_len}")
        if self.min_last_clip is not None and not 1 <= self.min_last_clip <= self.clip_len:
            raise ValueError(
                f"min_last_clip must be between 1 and the clip length {self.clip_len}, got {self.min_last_clip}"
            )

    @property
    def min_last(self) -> int:
        """The resolved ``min_last_clip``."""
        return self.min_last_clip if self.min_last_clip is not None else math.ceil(self.clip_len / 2)


@dataclass(frozen=True)
class ClipPlan:
    """Where a segment's clips come from in the decoded video."""

    first_frame: int
    """Index of the first frame of the first clip."""
    n_frames: int
    """Decoded frames the clips use, from ``first_frame`` on (the rest of the segment is dropped)."""
    n_clips: int
    padded_frames: int
    """Copies of the last used frame appended to fill the last clip."""

    @property
    def stop_frame(self) -> int:
        """One past the last decoded frame the clips use."""
        return self.first_frame + self.n_frames


def frame_index(seconds: float, fps: float) -> int:
    """The first frame index ``k`` with ``k / fps >= seconds``."""
    return math.ceil(round(seconds * fps, _FRAME_ROUNDING))


def frame_range(start: float, end: float, fps: float) -> tuple[int, int]:
    """Frames ``[first, stop)`` a segment owns: those with ``start <= k / fps < end`` (``k >= 0``)."""
    first = max(0, frame_index(start, fps))
    return first, max(first, frame_index(end, fps))


def plan_clips(first: int, stop: int, config: ClipConfig) -> ClipPlan | None:
    """Clips for the frames ``[first, stop)``; None when they are too few for one clip."""
    available = max(0, stop - first)
    full, remainder = divmod(available, config.clip_len)
    keep_partial = remainder > 0 and remainder >= config.min_last
    n_clips = full + int(keep_partial)
    if n_clips == 0:
        return None
    n_frames = full * config.clip_len + (remainder if keep_partial else 0)
    padded = config.clip_len - remainder if keep_partial else 0
    return ClipPlan(first_frame=first, n_frames=n_frames, n_clips=n_clips, padded_frames=padded)


def too_short_reason(first: int, stop: int, fps: float, config: ClipConfig) -> str:
    """Why ``plan_clips(first, stop, config)`` gave no clip, in words."""
    frames = max(0, stop - first)
    return (
        f"covers {frames} frame{'s' if frames != 1 else ''} at {fps:g} fps, fewer than the {config.min_last} "
        f"that make a clip (clips of {config.clip_len} frames; a shorter last clip is padded)"
    )

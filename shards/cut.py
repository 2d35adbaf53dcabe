"""Cutting one video into samples: the part of ``shards prepare`` that runs in worker processes.

``plan_video`` turns a video's caption segments into clip plans (``shards.clips``) before anything is
decoded; ``process_video`` then decodes the video once (``shards.decode``), straight into each
sample's frame array, and spools the samples, in segment order, to a temporary tar that the main
process copies into the shards. Decoding stops after the last frame a clip uses.

The end of the video is only known when ffmpeg stops producing frames (there is no probing): the
segments still pending then are clipped to the frames decoded, when enough are left for a clip, or
skipped. A damaged file that ffmpeg gave up on part-way is treated the same way, with the damage
named in the reasons.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videobert.shards import schema
from videobert.shards.clips import ClipConfig, ClipPlan, frame_range, plan_clips, too_short_reason
from videobert.shards.decode import DecodeError, DecodeOptions, VideoDecoder
from videobert.shards.transcript_entries import CLIPPED, SKIPPED, Problem, Segment, seconds, span
from videobert.shards.writer import SampleSpool, SpooledSample


@dataclass(frozen=True)
class SegmentPlan:
    """A segment and the frames its clips will use."""

    segment: Segment
    clips: ClipPlan


@dataclass(frozen=True)
class VideoJob:
    """What a worker needs to turn one video into samples."""

    order: int
    video_id: str
    path: str
    plans: tuple[SegmentPlan, ...]
    decode: DecodeOptions
    clip: ClipConfig
    spool: str
    written_through: int = -1
    """Segments with an index up to this one are in shards already (a resumed run): not spooled again."""
    frame_codec: str = schema.RAW_CODEC
    """How the samples store their frames (``schema.FRAME_CODECS``); compressed in the worker."""


@dataclass
class VideoResult:
    """What a worker did with one video: spooled samples in segment order, problems, frames decoded."""

    order: int
    samples: list[tuple[int, SpooledSample]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    frames: int = 0


def process_video(job: VideoJob) -> VideoResult:
    """Decode one video, cut its segments' clips, and spool the samples (runs in a worker process).

    A video that cannot be decoded, or fails in a way nobody foresaw, loses all its segments (and
    whatever was spooled); the run goes on.
    """
    result = VideoResult(job.order)
    decoder = VideoDecoder(job.path, job.decode)
    spool = SampleSpool(job.spool)
    try:
        for plan, clips, frames, end in _cut(job, decoder, result.problems):
            if plan.segment.index > job.written_through:
                sample = _sample(job, plan.segment, clips, frames, end)
                result.samples.append((plan.segment.index, spool.add(sample)))
    except Exception as e:  # noqa: BLE001 - one video's failure must not end a run over many
        unforeseen = not isinstance(e, DecodeError)
        if unforeseen:
            traceback.print_exc()
        reason = f"unexpected {type(e).__name__} while preparing it: {e}" if unforeseen else str(e)
        lost = sum(1 for plan in job.plans if plan.segment.index > job.written_through)
        result = VideoResult(job.order, problems=[Problem(
            input=job.path, video_id=job.video_id, segment=None, segments=lost,
            reason=f"{reason}; {count_noun(lost, 'caption segment')} skipped",
        )])
    finally:
        spool.close()
    if not result.samples:
        Path(job.spool).unlink(missing_ok=True)
    result.frames = decoder.frames_read
    return result


_Cut = tuple[SegmentPlan, ClipPlan, np.ndarray, float]
"""A sample's segment, its clips, their frames (n_clips, clip_len, H, W, 3) and the segment's end time."""


def _cut(job: VideoJob, decoder: VideoDecoder, problems: list[Problem]) -> Iterator[_Cut]:
    """Samples' frames from one sequential pass, decoded straight into each sample's array; decoding
    stops after the last segment's last frame."""
    with decoder:
        scratch = np.empty(decoder.frame_shape, dtype=np.uint8)  # frames between segments
        frames = _Frames(decoder.frame_shape)
        for i, plan in enumerate(job.plans):
            while decoder.frames_read < plan.clips.first_frame:
                if not decoder.read_into(scratch):
                    yield from _past_the_end(job, decoder, job.plans[i:], None, problems)
                    return
            buffer = frames.take(plan.clips.n_clips * job.clip.clip_len)
            while decoder.frames_read < plan.clips.stop_frame:
                if not decoder.read_into(buffer[decoder.frames_read - plan.clips.first_frame]):
                    yield from _past_the_end(job, decoder, job.plans[i:], buffer, problems)
                    return
            yield plan, plan.clips, _padded(buffer, plan.clips, job.clip), plan.segment.end


class _Frames:
    """One frame buffer for all of a video's samples, grown when a sample needs more: each sample is
    spooled before the next is decoded, and fresh memory for every sample costs a page fault per 4 KB
    of frames (the largest cost of a worker after ffmpeg)."""

    def __init__(self, frame_shape: tuple[int, int, int]) -> None:
        self.frame_shape = frame_shape
        self._buffer = np.empty((0, *frame_shape), dtype=np.uint8)

    def take(self, n_frames: int) -> np.ndarray:
        """(n_frames, H, W, 3), uninitialised; valid until the next call."""
        if len(self._buffer) < n_frames:
            self._buffer = np.empty((n_frames, *self.frame_shape), dtype=np.uint8)
        return self._buffer[:n_frames]


def _past_the_end(
    job: VideoJob, decoder: VideoDecoder, pending: Sequence[SegmentPlan], buffer: np.ndarray | None,
    problems: list[Problem],
) -> Iterator[_Cut]:
    """The segments the video ended (or broke off) before: clipped to its end, or skipped."""
    n_frames = decoder.frames_read
    duration = n_frames / job.decode.fps
    end_of = f"the end of the video ({seconds(duration)} s)"
    if decoder.damage is not None:
        end_of = f"the last frame decoded from the damaged file ({seconds(duration)} s)"
        problems.append(Problem(
            input=job.path, video_id=job.video_id, segment=None, action=CLIPPED, segments=0,
            reason=f"decoding {job.path} ended with errors after {n_frames} frames ({seconds(duration)} s; "
            f"{decoder.damage}); the frames decoded are used",
        ))
    for plan in pending:
        segment, first = plan.segment, plan.clips.first_frame
        label = f"segment {segment.index} of {job.video_id} ({span(segment.start, segment.end)})"
        clipped = plan_clips(first, n_frames, job.clip) if first < n_frames else None
        if clipped is not None:
            reason, action = f"{label}: ends after {end_of}; clipped to it ({clipped.n_clips} clips)", CLIPPED
        elif first >= n_frames:
            reason, action = f"{label}: starts after {end_of}", SKIPPED
        else:
            rest = too_short_reason(first, n_frames, job.decode.fps, job.clip)
            reason, action = f"{label}: ends after {end_of}; the rest {rest}", SKIPPED
        problems.append(Problem(input=job.path, video_id=job.video_id, segment=segment.index, reason=reason, action=action))
        if clipped is not None:
            frames = _padded(buffer[: clipped.n_clips * job.clip.clip_len], clipped, job.clip)
            yield plan, clipped, frames, duration


def _padded(buffer: np.ndarray, clips: ClipPlan, clip: ClipConfig) -> np.ndarray:
    """Frames (n_clips, clip_len, H, W, 3), the last clip filled up by repeating its last frame."""
    if clips.padded_frames:
        buffer[clips.n_frames :] = buffer[clips.n_frames - 1]
    return buffer.reshape(clips.n_clips, clip.clip_len, *buffer.shape[1:])


def _sample(job: VideoJob, segment: Segment, clips: ClipPlan, frames: np.ndarray, end: float) -> schema.Sample:
    meta = schema.SampleMeta(
        video_id=job.video_id, segment_index=segment.index, start=segment.start, end=end,
        fps=job.decode.fps, clip_len=job.clip.clip_len, frame_size=(frames.shape[2], frames.shape[3]),
        n_clips=clips.n_clips, first_frame=clips.first_frame, source=segment.source,
        extra={"padded_frames": clips.padded_frames} if clips.padded_frames else {},
    )
    return schema.Sample(key=schema.make_key(job.video_id, segment.index), text=segment.text, meta=meta, frames=frames,
                         frame_codec=job.frame_codec)


def plan_video(
    video_id: str, segments: Sequence[Segment], source: str, fps: float, clip: ClipConfig
) -> tuple[tuple[SegmentPlan, ...], list[Problem]]:
    """Clip plans of a video's segments; segments too short for one clip are reported (as problems of
    ``source``, the transcript file)."""
    plans, problems = [], []
    for segment in segments:
        first, stop = frame_range(segment.start, segment.end, fps)
        clips = plan_clips(first, stop, clip)
        if clips is None:
            problems.append(Problem(
                input=source, video_id=video_id, segment=segment.index,
                reason=f"segment {segment.index} of {video_id} ({span(segment.start, segment.end)}) "
                f"{too_short_reason(first, stop, fps, clip)}",
            ))
        else:
            plans.append(SegmentPlan(segment, clips))
    return tuple(plans), problems


def count_noun(n: int, noun: str) -> str:
    """``1 segment is``, ``2 segments are``: for reasons that say how much was lost."""
    return f"{n} {noun} is" if n == 1 else f"{n} {noun}s are"



"""``videobert shards prepare``: videos and their transcripts into WebDataset clip shards.

    videobert shards prepare --videos VIDEOS/ --transcripts caption.json --out SHARDS/
        [--fps 20] [--size 224] [--crop center|none|HxW] [--clip-len 30] [--min-last-clip N]
        [--max-samples N] [--max-bytes 1G] [--workers N] [--transcript-format FMT] [--language en]
        [--part I/N] [--max-segment-seconds 300] [--max-frame-pixels 8294400] [--decode-timeout 60]
        [--sample F] [--frame-codec raw|jpeg|png] [--overwrite]

One sample per caption segment: the segment's frames (decoded once per video at ``--fps``, short side
``--size``, centre crop), grouped into clips of ``--clip-len`` frames (see ``shards.clips`` for the
boundary and trailing-clip rules), its text and metadata (``shards.schema``). Videos are matched to
transcript ids by file name without extension; transcripts are read by ``shards.transcripts``
(HowTo100M caption.json, YouCook2 annotations, WebVTT, SRT, JSONL manifest; subtitles named
``VIDEO_ID.LANG.vtt`` as yt-dlp writes them, one language per video). A folder may be given as both
``--videos`` and ``--transcripts``; files in it that are neither are ignored and counted.

Sample. ``--sample F`` prepares only the share F of the videos chosen by a hash of their ids (the same
videos on every machine, in every run, whatever the parts): clip shards for the codebook's sample,
while ``shards tokenize-videos`` takes the whole corpus to token shards without storing frames.

Frames. ``--frame-codec`` stores them raw (the default: nothing to decode when read) or as one JPEG
(lossy, about a tenth of the bytes at the paper's settings) or PNG (lossless) image per frame,
compressed in the workers; every reader decodes them (``shards.schema``).

Parts. ``--part I/N`` (or the launcher's variables, ``shards.parts``) prepares the videos whose id
hashes to part I, into ``SHARDS/part-0000I/``, resumable on its own; ``videobert shards status SHARDS``
combines the parts. A part reads only its own videos' captions from the transcripts (caption.json is
streamed), and its workers are started before it reads them, so they never hold the captions.

Work. Worker processes (``--workers``, default: one per CPU) each decode one video in one pass and
spool its samples to a temporary tar in the output folder (``shards.cut``); the main process copies
the spooled samples into the shards in input order (a kernel copy of ready-made tar members: nothing
is decoded twice) and deletes the spool. Output is therefore the same bytes whatever the number of
workers, and memory stays bounded by one sample per worker however long a video is. At most two
videos per worker are decoded ahead of the one being copied. Each ffmpeg gets the CPUs divided among
the workers (``--decode-threads``; one thread each at the default of one worker per CPU): ffmpeg's own
choice, a thread per core in every process, cost up to a fifth more CPU (measured) when the workers fill
the cores.

Output folder: ``shard-NNNNNN.tar`` + ``shard-NNNNNN.stats.json`` (see ``shards.writer``),
``run.json`` (the arguments and a fingerprint of the input files), ``errors.jsonl`` (one line per
video, segment or file that was skipped or fixed, with the reason and the number of caption segments
it accounts for) and, at the end, ``summary.json`` (videos, segments, clips, bytes, hours of video
decoded, seconds; segments written + skipped = segments read).

Resuming. Re-running with the same arguments finishes an interrupted run: complete shards are kept,
videos before the last complete shard's last sample are skipped, the video it ends in is decoded again
and only its later segments written; errors.jsonl keeps the lines of the skipped videos and the rest
is regenerated. Re-running with different arguments stops and names them (``--overwrite`` starts over).
A run killed at any moment leaves no file a reader would take for a complete shard.

Bad input never stops the run: a missing, empty, unreadable or audio-only video file, a malformed or
non-UTF-8 transcript, segments that are empty, reversed, overlapping, out of order, longer than
``--max-segment-seconds`` or past the end of the video are each fixed or listed in errors.jsonl, and so
is a video that is a playlist in disguise, stalls ffmpeg for ``--decode-timeout`` seconds, or has frames
beyond ``--max-frame-pixels`` (``shards.decode``). A truncated video contributes the frames decoded
before the damage. Exit status: 0 when samples were written (or a part was given no video at all), 1
when nothing at all could be written, 2 when the arguments are wrong.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videobert.models.errors import VideoBertError
from videobert.shards import schema, storage
from videobert.shards.clips import ClipConfig
from videobert.shards.cut import SegmentPlan, VideoJob, VideoResult, count_noun, plan_video, process_video
from videobert.shards.decode import DecodeOptions, parse_crop
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.folders import ErrorLog, read_json_lines, write_json_atomic
from videobert.shards.options import Flag, add_config_arguments, config_from_args, parse_bytes
from videobert.shards.parts import Part, PartOption, SummaryRules, claim_part, finish_part
from videobert.shards.ranks import available_cpus
from videobert.shards.transcript_entries import FORMATS, SKIPPED, Problem
from videobert.shards.transcripts import (
    DEFAULT_LANGUAGE, MAX_SEGMENT_SECONDS, Transcripts, list_transcript_files, read_transcripts,
)
from videobert.shards.video_files import (
    SampledPart, VideoFile, VideoFiles, inputs_fingerprint, list_videos, part_videos,
)
from videobert.shards.writer import ShardWriter, SpooledSample, resume_point

STAGE = "prepare"
VIDEO_ORDER = "video_order"
"""errors.jsonl field: position of the line's video in the run's video order (None: found reading inputs)."""
SPOOL_PREFIX = "spool-"


class ArgumentsError(VideoBertError, ValueError):
    """The run cannot start as asked (bad values, or an output folder written with other arguments)."""


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(PartOption):
    """Everything ``prepare`` needs; validated on construction (all problems reported at once)."""

    videos: tuple[str, ...]
    """Video files and folders (folders: their video files, recursively, sorted)."""
    transcripts: tuple[str, ...]
    """Transcript files and folders: HowTo100M caption.json, YouCook2 annotations, VTT, SRT, JSONL."""
    out: str
    """Output folder for shards, stats, errors.jsonl, summary.json."""
    transcript_format: str | None = None
    """Force one of ``shards.transcripts.FORMATS`` instead of detecting each file's."""
    language: str = DEFAULT_LANGUAGE
    """Subtitle language used when a video has subtitle files in several (yt-dlp's ``VIDEO.LANG.vtt``:
    en, en-US, de...); the others are listed in errors.jsonl."""
    fps: float = 20.0
    """Frames per second decoded (the paper: 20)."""
    size: int = 224
    """Short side after scaling, in pixels."""
    crop: str = "center"
    """``center`` (size x size), ``none`` (whole scaled frame) or ``HxW``."""
    clip_len: int = 30
    """Frames per clip (the paper: 30, i.e. 1.5 s)."""
    min_last_clip: int | None = None
    """Least frames of a trailing partial clip to keep it (padded); default: half a clip."""
    max_segment_seconds: float = MAX_SEGMENT_SECONDS
    """Longest caption segment cut into a sample; longer ones are skipped, with the reason."""
    max_frame_pixels: int = DecodeOptions.max_frame_pixels
    """Most pixels of a scaled frame (before the crop); a video of a more extreme aspect ratio is skipped."""
    decode_timeout: float = 60.0
    """Seconds without a decoded frame after which a video's ffmpeg is stopped (its frames so far are used)."""
    sample: float | None = None
    """Only this share of the videos (0 < F <= 1), chosen by a hash of each video's id: the same videos
    on every machine, in every run and whatever the parts (the codebook's sample: ``--sample 0.02``)."""
    frame_codec: str = schema.RAW_CODEC
    """How the shards store frames: ``raw`` (no decode cost when read), ``jpeg`` (lossy, about a tenth of
    the bytes) or ``png`` (lossless); readers decode either (``schema.FRAME_CODECS``)."""
    max_samples: int | None = 10_000
    """Samples per shard at most."""
    max_bytes: int | None = 1 << 30
    """Bytes per shard at most (a single larger sample gets a shard of its own)."""
    workers: int = field(default_factory=lambda: available_cpus())
    """Decoding processes (each runs one ffmpeg at a time)."""
    decode_threads: int = 0
    """ffmpeg threads per video; 0: the CPUs shared out among the workers (one each with one worker per
    CPU, the default). The frames are the same whatever the number."""
    overwrite: bool = False
    """Delete the output folder's previous shards and start over."""
    progress: bool = True
    """Show a progress bar (tqdm, on stderr)."""

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ArgumentsError("; ".join(problems))

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(fps=self.fps, size=self.size, crop=parse_crop(self.crop, self.size),
                             max_frame_pixels=self.max_frame_pixels, stall_timeout=self.decode_timeout,
                             threads=self.decode_threads or default_decode_threads(self.workers))

    def clip_config(self) -> ClipConfig:
        return ClipConfig(clip_len=self.clip_len, min_last_clip=self.min_last_clip)

    def arguments(self) -> dict[str, Any]:
        """The arguments that decide the output (stored in run.json; a re-run must match them)."""
        crop = parse_crop(self.crop, self.size)
        return {
            "videos": [str(Path(v).absolute()) for v in self.videos],
            "transcripts": [str(Path(t).absolute()) for t in self.transcripts],
            "transcript_format": self.transcript_format, "language": self.language, "fps": float(self.fps),
            "size": self.size,
            "crop": list(crop) if crop else None, "clip_len": self.clip_len,
            "min_last_clip": self.clip_config().min_last, "max_samples": self.max_samples, "max_bytes": self.max_bytes,
            "max_segment_seconds": float(self.max_segment_seconds), "max_frame_pixels": self.max_frame_pixels,
            "sample": self.sample, "frame_codec": self.frame_codec,
        }


def default_decode_threads(workers: int) -> int:
    """ffmpeg threads per video when ``workers`` decode at once: the CPUs shared out, at least one each."""
    return max(1, available_cpus() // workers)


def _config_problems(config: PrepareConfig) -> list[str]:
    problems = config.part_problems()
    if not config.videos:
        problems.append("no --videos given")
    if not config.transcripts:
        problems.append("no --transcripts given")
    if config.transcript_format is not None and config.transcript_format not in FORMATS:
        problems.append(f"--transcript-format must be one of {', '.join(FORMATS)}")
    checks = [
        (config.fps > 0, "--fps must be positive"), (config.size >= 1, "--size must be at least 1"),
        (config.clip_len >= 1, "--clip-len must be at least 1"), (config.workers >= 1, "--workers must be at least 1"),
        (config.decode_threads >= 0, "--decode-threads must be 0 (the CPUs shared out among the workers) or more"),
        (config.max_samples is None or config.max_samples >= 1, "--max-samples must be at least 1"),
        (config.max_bytes is None or config.max_bytes >= 10240, "--max-bytes must be at least 10240 (one tar record)"),
        (config.min_last_clip is None or 1 <= config.min_last_clip <= max(config.clip_len, 1),
         f"--min-last-clip must be between 1 and --clip-len ({config.clip_len})"),
        (config.max_segment_seconds > 0, "--max-segment-seconds must be positive"),
        (config.decode_timeout > 0, "--decode-timeout must be positive"),
        (config.sample is None or 0 < config.sample <= 1, "--sample must be a share of the videos: 0 < F <= 1"),
        (config.frame_codec in schema.FRAME_CODECS, f"--frame-codec must be one of {', '.join(schema.FRAME_CODECS)}"),
    ]
    problems += [message for ok, message in checks if not ok]
    try:
        crop = parse_crop(config.crop, config.size)
    except ValueError as e:
        problems.append(f"--crop: {e}")
    else:
        smallest = max(config.size * config.size, crop[0] * crop[1] if crop else 0)
        if config.max_frame_pixels < smallest:
            problems.append(f"--max-frame-pixels must be at least {smallest} (the --size and --crop asked for)")
    if not storage.is_remote(config.out) and Path(config.out).exists() and not Path(config.out).is_dir():
        problems.append(f"--out {config.out} is a file; give a folder")
    return problems


# ---------------------------------------------------------------------------------------------------
# Inputs: the part's share of the videos


def sampled_part(config: PrepareConfig) -> Part:
    """The part this process does, narrowed to ``--sample``'s share of the videos when given."""
    part = config.resolve_part()
    if config.sample is None:
        return part
    return SampledPart(part.index, part.count, part.source, part.local_rank, share=config.sample)


# ---------------------------------------------------------------------------------------------------
# Main side: plan, run, copy into shards in order


@dataclass
class _Counters:
    """Work done, carried across resumed runs in each sample's ``state``."""

    videos_done: int = 0
    videos_with_samples: int = 0
    frames_decoded: int = 0
    wall_seconds: float = 0.0

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "_Counters":
        return cls(**state) if state else cls()


@dataclass
class _Work:
    """One video of the run: its plans and the problems found before decoding."""

    video: VideoFile
    plans: tuple[SegmentPlan, ...]
    problems: list[Problem]


def _plan_run(config: PrepareConfig, videos: list[VideoFile], transcripts: Transcripts) -> list[_Work]:
    by_video: dict[str, list[Problem]] = collections.defaultdict(list)
    for problem in transcripts.problems:
        if problem.video_id is not None:
            by_video[problem.video_id].append(problem)
    work = []
    for video in videos:
        segments = transcripts.segments.get(video.video_id, [])
        source = transcripts.sources.get(video.video_id, "")
        plans, problems = plan_video(video.video_id, segments, source, config.fps, config.clip_config())
        problems = by_video.get(video.video_id, []) + problems
        if not segments:
            problems.append(_no_captions(video, transcripts))
        work.append(_Work(video, plans, problems))
    return work


def _no_captions(video: VideoFile, transcripts: Transcripts) -> Problem:
    if video.video_id in transcripts.sources:
        reason = f"none of the caption segments of {video.video_id} is usable (see the lines above)"
    else:
        reason = f"no transcript gives captions for video {video.video_id}"
    if not Path(video.path).exists():
        reason = f"video file {video.path} not found, and {reason}"
    return Problem(input=video.path, video_id=video.video_id, segment=None, reason=reason, segments=0)


def _input_problems(videos: list[VideoFile], duplicates: list[Problem], transcripts: Transcripts) -> list[Problem]:
    """Problems not tied to a video file of the run (errors.jsonl lines without a video order)."""
    ids = {v.video_id for v in videos}
    problems = list(duplicates) + [p for p in transcripts.problems if p.video_id not in ids]
    for video_id, segments in transcripts.segments.items():
        if video_id not in ids:
            problems.append(Problem(
                input=transcripts.sources[video_id], video_id=video_id, segment=None, segments=len(segments),
                reason=f"no video file named {video_id} among the --videos inputs; {count_noun(len(segments), 'segment')} skipped",
            ))
    return problems


def _line(problem: Problem, order: int | None) -> dict[str, Any]:
    return {**problem.to_json(), VIDEO_ORDER: order}


# ---------------------------------------------------------------------------------------------------
# The output folder: run.json, starting over, resuming


def _argument_differences(previous: dict[str, Any], record: dict[str, Any]) -> list[str]:
    old, new = previous.get("arguments", {}), record["arguments"]
    defaults = PrepareConfig.__dataclass_fields__
    found = [  # an option newer than the folder's run file counts as given with its default
        f"--{name.replace('_', '-')} was {old.get(name)!r}, now {new.get(name)!r}"
        for name in new if old.get(name, getattr(defaults.get(name), "default", None)) != new.get(name)
    ]
    if previous.get("inputs") != record.get("inputs") and not found:
        found.append("the video or transcript files found changed (added, removed or resized)")
    return found


def _start_errors(out: Path, input_problems: list[Problem], resume_order: int, resumed: bool) -> ErrorLog:
    """errors.jsonl: the input problems, then the kept lines of videos before the resume point."""
    lines = [_line(p, None) for p in input_problems]
    if resumed:
        lines += [
            line for line in read_json_lines(out / schema.ERRORS_FILE)
            if isinstance(line.get(VIDEO_ORDER), int) and line[VIDEO_ORDER] < resume_order
        ]
    return ErrorLog(out / schema.ERRORS_FILE, lines)


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """State of the main process while it copies videos into shards."""

    writer: ShardWriter
    errors: ErrorLog
    counters: _Counters
    out: Path
    resume_order: int
    """Order of the first video this run processes."""
    resume_segment: int
    """Last segment of that video already in a shard (-1: none, a fresh start)."""
    wall_before: float
    """Seconds spent by earlier runs up to the resume point."""
    started: float = field(default_factory=time.perf_counter)

    def take(self, work: _Work, result: VideoResult | None) -> None:
        """Record one video: its problems, then its samples in segment order."""
        order = work.video.order
        for problem in work.problems + (result.problems if result else []):
            self.errors.write(_line(problem, order))
        self.errors.flush()
        # The resume video's first samples are in shards already, and counted in their state.
        counted = order == self.resume_order and self.resume_segment >= 0
        if result is not None and result.samples:
            self._copy(order, result.samples, counted)
        self.counters.videos_done += 1
        self.counters.frames_decoded += result.frames if result else 0
        self.counters.videos_with_samples += int(bool(result and result.samples) and not counted)
        self.counters.wall_seconds = self.elapsed()

    def elapsed(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _copy(self, order: int, samples: list[tuple[int, SpooledSample]], counted: bool) -> None:
        """Copy a video's spooled samples into the shards; each carries the counters of the videos before
        it (plus this one as a video with samples), which is what a run resuming after it starts from."""
        state = self.state_after(counted)
        spool = self.out / _spool_name(order)
        with open(spool, "rb") as source:
            for segment_index, spooled in samples:
                self.writer.copy_members(source, spooled, (order, segment_index), state=state)
        spool.unlink()


    def state_after(self, counted: bool) -> dict[str, Any]:
        """The counters a run resuming after the video being written starts from."""
        state = asdict(self.counters)
        state["videos_with_samples"] += int(not counted)
        state["wall_seconds"] = self.elapsed()
        return state


def _spool_name(order: int) -> str:
    return f"{SPOOL_PREFIX}{order:09d}{schema.SHARD_SUFFIX}{schema.PARTIAL_SUFFIX}"


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork: workers start at once with the parent's modules loaded (webdataset pulls in torch, seconds
    # of import per worker otherwise); they only run ffmpeg and numpy. Elsewhere: the safe default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _jobs(config: PrepareConfig, work: list[_Work], run: _Run) -> Iterator[tuple[_Work, VideoJob | None]]:
    """The videos from the resume point on, each with a decoding job when it has segments to cut."""
    decode, clip = config.decode_options(), config.clip_config()
    for item in work[run.resume_order :]:
        order = item.video.order
        job = None
        if item.plans:
            written = run.resume_segment if order == run.resume_order else -1
            job = VideoJob(order, item.video.video_id, item.video.path, item.plans, decode, clip,
                           str(run.out / _spool_name(order)), written, frame_codec=config.frame_codec)
        yield item, job


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
        pool.submit(os.getpid).result()  # start the workers now, before the progress bar starts a thread
        yield pool


def _execute(config: PrepareConfig, work: list[_Work], run: _Run, pool: concurrent.futures.Executor,
             worker: Callable[[VideoJob], VideoResult] = process_video) -> None:
    """Run ``worker`` on each video in worker processes, a bounded window ahead; copy results into
    shards in order."""
    jobs = _jobs(config, work, run)
    window: collections.deque[tuple[_Work, concurrent.futures.Future | None]] = collections.deque()
    bar = tqdm(total=len(work), initial=run.resume_order, unit="video", disable=not config.progress)
    try:
        _fill(window, jobs, pool, 2 * config.workers, worker)
        while window:
            item, future = window.popleft()
            result = future.result() if future is not None else None
            _fill(window, jobs, pool, 2 * config.workers, worker)
            run.take(item, result)
            bar.update(1)
            bar.set_postfix_str(f"{run.counters.frames_decoded / max(run.elapsed(), 1e-9):.0f} frames/s")
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()


def _fill(window: collections.deque, jobs: Iterator[tuple[_Work, VideoJob | None]], pool, size: int,
          worker: Callable[[VideoJob], VideoResult]) -> None:
    while len(window) < size:
        item = next(jobs, None)
        if item is None:
            return
        work, job = item
        window.append((work, pool.submit(worker, job) if job is not None else None))


@dataclass
class PrepareSummary:
    """``summary.json``: what a run (all its resumed parts together) read, wrote and skipped."""

    videos_read: int
    videos_with_samples: int
    videos_skipped: int
    segments_read: int
    segments_written: int
    segments_skipped: int
    transcript_files_read: int
    transcript_files_skipped: int
    shards: int
    clips: int
    bytes: int
    frames_decoded: int
    hours_decoded: float
    wall_seconds: float
    frames_per_second: float
    errors_lines: int
    files_ignored: int = 0
    """Files beside the inputs that are neither videos nor transcripts (a downloader's .info.json,
    thumbnails)."""

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}

    @classmethod
    def read(cls, path: Path) -> "PrepareSummary":
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


SUMMARY_RULES = SummaryRules(
    accounting=("segments_read", "segments_written", "segments_skipped"),
    throughput=("frames_per_second", "frames/s"), rates={"frames_per_second": ("frames_decoded", "wall_seconds")},
)
"""How the parts' summaries combine (``shards.parts``): every count adds up over the parts."""


def prepare(config: PrepareConfig) -> PrepareSummary:
    """Run the stage, or this process's part of it (library entry point; ``run`` is the command line's).

    Raises ``ArgumentsError`` when the output folder holds a run with other arguments.
    """
    ffmpeg_exe()  # no ffmpeg at all is not a problem of one video: fail before starting
    with storage.working_folder(config.out) as out:  # a bucket's prefix: worked locally, uploaded as committed
        return _prepare_into(config, Path(out))


def _prepare_into(config: PrepareConfig, out: Path) -> PrepareSummary:
    part = sampled_part(config)
    videos = part_videos(list_videos(config.videos), part)
    listing = list_transcript_files(config.transcripts)
    record = {
        "stage": STAGE, "format_version": schema.FORMAT_VERSION, "arguments": config.arguments(),
        "inputs": {"videos": len(videos.videos), "transcript_files": len(listing.files),
                   "fingerprint": inputs_fingerprint(videos.videos, listing.files)},
    }
    folder, finished = claim_part(out, record, part, overwrite=config.overwrite, stage=STAGE,
                                  argument_differences=_argument_differences, error=ArgumentsError,
                                  extra_patterns=(f"{SPOOL_PREFIX}*",))
    if finished:
        return PrepareSummary.read(folder / schema.SUMMARY_FILE)
    ignored = len(videos.ignored | listing.ignored) if part.first else 0
    with _worker_pool(config.workers) as pool:
        # The workers are forked before the transcripts are read: they never hold the captions.
        transcripts = read_transcripts(config.transcripts, config.transcript_format, language=config.language,
                                       part=part, max_segment_seconds=config.max_segment_seconds)
        summary = _prepare_part(config, folder, videos, transcripts, ignored, pool)
    finish_part(out, part, SUMMARY_RULES)
    return summary


def _prepare_part(config: PrepareConfig, out: Path, videos: VideoFiles, transcripts: Transcripts, ignored: int,
                  pool: concurrent.futures.Executor) -> PrepareSummary:
    """Decode this part's videos into ``out``, resuming where an earlier run of it stopped."""
    resume = resume_point(out)
    order, segment = resume.last_position if resume.last_position is not None else (0, -1)
    work = _plan_run(config, videos.videos, transcripts)
    input_problems = _input_problems(videos.videos, videos.duplicates, transcripts)
    errors = _start_errors(out, input_problems, order, resumed=resume.last_position is not None)
    counters = _Counters.from_state(resume.last_state)
    writer = ShardWriter(
        out, max_samples=config.max_samples, max_bytes=config.max_bytes, start_index=resume.next_index,
        extra=_stats_extra(config), before_finish=errors.sync,
    )
    run = _Run(writer, errors, counters, out, order, segment, wall_before=counters.wall_seconds)
    try:
        with writer:
            _execute(config, work, run, pool)
    finally:
        errors.close()
    unmatched = len(transcripts.segments.keys() - {v.video_id for v in videos.videos})
    videos_read = len(videos.videos) + len(videos.duplicates) + unmatched
    summary = _summarize(out, config, run.counters, videos_read, transcripts, ignored, resume.shards + writer.finished)
    write_json_atomic(out / schema.SUMMARY_FILE, summary.to_json())
    return summary


def _stats_extra(config: PrepareConfig) -> dict[str, Any]:
    crop = parse_crop(config.crop, config.size)
    return {"kind": schema.CLIP_KIND, "fps": float(config.fps), "clip_len": config.clip_len,
            "frame_size": list(crop) if crop else None}


def _summarize(out: Path, config: PrepareConfig, counters: _Counters, videos_read: int, transcripts: Transcripts,
               ignored: int, shards: Sequence) -> PrepareSummary:
    """The whole run's figures; segments are counted from the shards' stats and errors.jsonl, and must
    add up to the segments the transcripts hold."""
    lines = read_json_lines(out / schema.ERRORS_FILE)
    summary = PrepareSummary(
        videos_read=videos_read, videos_with_samples=counters.videos_with_samples,
        videos_skipped=videos_read - counters.videos_with_samples,
        segments_read=transcripts.segments_read, segments_written=sum(s.samples for s in shards),
        segments_skipped=sum(int(line["segments"]) for line in lines if line["action"] == SKIPPED),
        transcript_files_read=transcripts.files_read, transcript_files_skipped=transcripts.files_skipped,
        files_ignored=ignored, shards=len(shards), clips=sum(s.clips for s in shards), bytes=sum(s.bytes for s in shards),
        frames_decoded=counters.frames_decoded, hours_decoded=counters.frames_decoded / config.fps / 3600,
        wall_seconds=counters.wall_seconds,
        frames_per_second=counters.frames_decoded / counters.wall_seconds if counters.wall_seconds else 0.0,
        errors_lines=len(lines),
    )
    if summary.segments_written + summary.segments_skipped != summary.segments_read:
        raise RuntimeError(
            f"segment accounting does not add up: {summary.segments_written} written + "
            f"{summary.segments_skipped} skipped != {summary.segments_read} read: {out} was changed since it was "
            "written (shards or errors.jsonl edited or removed), or this is a bug"
        )
    return summary


# ---------------------------------------------------------------------------------------------------
# Command line


FLAGS = {
    "videos": Flag(metavar="PATH"),
    "transcripts": Flag(metavar="PATH"),
    "out": Flag(metavar="FOLDER"),
    "transcript_format": Flag(choices=FORMATS),
    "max_bytes": Flag(type=parse_bytes, metavar="SIZE",
                      help="bytes per shard at most, e.g. 500M, 1G (default 1G); a single larger sample gets a shard of its own"),
}
"""Where prepare's options differ from their fields' defaults (``shards.options``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PrepareConfig, FLAGS)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(PrepareConfig, args)
    part = config.resolve_part()
    if not part.whole:
        print(f"videobert shards prepare: part {part} (from {part.source})", file=sys.stderr)
    summary = prepare(config)
    print(format_summary(summary, part.folder(args.out)))
    nothing_to_do = not part.whole and summary.videos_read == 0  # more parts than videos: not a failure
    return 0 if summary.segments_written > 0 or nothing_to_do else 1


def format_summary(summary: PrepareSummary, out: Path) -> str:
    """The printed summary: what was read, written and skipped, and how fast."""
    s = summary
    lines = [
        f"prepared {out}: shards {s.shards}, samples {s.segments_written}, clips {s.clips}, {s.bytes / 1e9:.3f} GB",
        f"  videos    read {s.videos_read}, with samples {s.videos_with_samples}, skipped {s.videos_skipped}",
        f"  segments  read {s.segments_read} = written {s.segments_written} + skipped {s.segments_skipped}",
        f"  transcript files read {s.transcript_files_read}, skipped {s.transcript_files_skipped}; "
        f"other files ignored {s.files_ignored}",
        f"  decoded   {s.frames_decoded} frames, {s.hours_decoded:.3f} h of video in {s.wall_seconds:.1f} s "
        f"({s.frames_per_second:.0f} frames/s)",
    ]
    if s.errors_lines:
        lines.append(f"  {s.errors_lines} problems listed in {out / schema.ERRORS_FILE}")
    if s.segments_written == 0:
        lines.append("  nothing could be written: see the problems above")
    return "\n".join(lines)

"""Render the built-in synthetic instructional-video corpus: real H.264 videos, transcripts, labels.

Each video is a sequence of segments; each segment shows one action (a verb: a motion such as
orbiting, shaking, rolling, flipping, lifting or splitting in two) applied to one object (a noun: a
shape in a colour), over a background, lighting and noise that change from video to video. A
speech-like transcript per video mentions the verbs and nouns in varied phrasings, with filler
sentences and ASR-like timing (see ``shards.synthetic.speech``); the true segment boundaries and labels
are written separately for evaluation.

Layout of OUT:

    train/videos/*.mp4, train/captions.json, train/annotations.json
    heldout/videos/*.mp4, heldout/captions.json, heldout/annotations.json
    labels.jsonl        one line per segment: video, split, segment, start, end, verb, noun, sentence
    vocabulary.json     {"verbs": [...], "nouns": [...]}
    corpus.json         the options (seed included) and counts; written last: a corpus without it
                        is incomplete

``captions.json`` is in the HowTo100M form {video_id: {"start": [...], "end": [...], "text": [...]}};
``annotations.json`` is in the YouCook2 form {"database": {video_id: {"subset", "duration",
"annotations": [{"id", "segment": [start, end], "sentence", "verb", "noun"}]}}}; each sentence
describes what the segment shows in six or more words (``shards.synthetic.describe``), the reference
captions of both splits (the training split's train a captioner, the held-out split's score it).

Everything is a function of the seed: the same options give the same bytes of every JSON file and
the same decoded frames (x264 runs single-threaded with bit-exact flags), whatever ``--workers``.
Re-running into a folder that holds a complete corpus with the same options reuses it; other
options need ``--overwrite``.

Example:

    videobert shards synth --out runs/synth --train-videos 40 --heldout-videos 10 --workers 2
    videobert shards prepare --videos runs/synth/train/videos \\
        --transcripts runs/synth/train/captions.json --out runs/synth/train-clips --fps 10 --size 64 --clip-len 15
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ffmpeg
import numpy as np
from tqdm import tqdm

from videobert.models.errors import VideoBertError
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.shards.synthetic import describe, scene, speech

CORPUS_FORMAT_VERSION = 2
"""2: annotation sentences describe the segment (``shards.synthetic.describe``); older corpora are rendered anew."""
SPLITS = ("train", "heldout")
SUBSETS = {"train": "training", "heldout": "validation"}
"""YouCook2's names for the splits, used in annotations.json."""

VIDEOS_DIR = "videos"
CAPTIONS_FILE = "captions.json"
ANNOTATIONS_FILE = "annotations.json"
LABELS_FILE = "labels.jsonl"
VOCABULARY_FILE = "vocabulary.json"
CORPUS_FILE = "corpus.json"

_CHUNK_FRAMES = 32  # frames drawn at once: bounds memory, keeps the NumPy arrays large enough


class SynthError(VideoBertError, ValueError):
    """Bad options or an output folder that holds something else."""


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What to render. Every output byte is a function of these fields."""

    train_videos: int = 40
    """Videos in the train split."""
    heldout_videos: int = 10
    """Videos in the held-out split."""
    seed: int = 0
    """Everything rendered follows from it."""
    size: int = 128
    """Rendered frame width and height in pixels (even, for yuv420p)."""
    fps: int = 20
    """Rendered frame rate."""
    segments: tuple[int, int] = (5, 9)
    """Inclusive range of segments per video."""
    segment_seconds: tuple[float, float] = (3.0, 6.0)
    """Range of segment durations in seconds (drawn in steps of 0.1 s)."""
    crf: int = 23
    """x264 quality (lower is better)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SynthError("invalid synth options: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.train_videos < 1 or self.heldout_videos < 1:
            out.append("--train-videos and --heldout-videos must be at least 1")
        if self.seed < 0:
            out.append(f"--seed {self.seed}: use a number >= 0")
        if self.size < 32 or self.size % 2:
            out.append(f"--size {self.size}: use an even number of pixels, at least 32")
        if not 1 <= self.fps <= 120:
            out.append(f"--fps {self.fps}: use 1 to 120")
        lo, hi = self.segments
        if not 1 <= lo <= hi:
            out.append(f"--segments {lo} {hi}: need 1 <= MIN <= MAX")
        s_lo, s_hi = self.segment_seconds
        if not 1.5 <= s_lo <= s_hi:
            out.append(f"--segment-seconds {s_lo:g} {s_hi:g}: need 1.5 <= MIN <= MAX (a clip is 1.5 s)")
        if not 0 <= self.crf <= 51:
            out.append(f"--crf {self.crf}: use 0 to 51")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["segments"] = list(self.segments)
        d["segment_seconds"] = list(self.segment_seconds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthConfig":
        d = dict(d)
        d["segments"] = tuple(int(x) for x in d["segments"])
        d["segment_seconds"] = tuple(float(x) for x in d["segment_seconds"])
        return cls(**d)


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    start: float
    end: float
    action: scene.Action


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video and write its transcript, drawn from the seed."""

    video_id: str
    split: str
    duration: float
    background: scene.Background
    segments: tuple[SegmentPlan, ...]
    entropy: tuple[int, ...]
    """Seed material of this video's random streams (independent of the worker that renders it)."""


@dataclass(frozen=True)
class CorpusInfo:
    """A rendered corpus: where its files are and what it holds."""

    out: Path
    config: SynthConfig
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    videos: dict[str, tuple[str, ...]]
    """Split name -> video ids."""
    segments: dict[str, int]
    """Split name -> number of labelled segments."""
    seconds: dict[str, float]
    """Split name -> total video duration."""
    reused: bool = False
    """True when a complete corpus with the same options was found and nothing was rendered."""

    def videos_dir(self, split: str) -> Path:
        return self.out / split / VIDEOS_DIR

    def video_path(self, split: str, video_id: str) -> Path:
        return self.videos_dir(split) / f"{video_id}.mp4"

    def captions(self, split: str) -> Path:
        return self.out / split / CAPTIONS_FILE

    def annotations(self, split: str) -> Path:
        return self.out / split / ANNOTATIONS_FILE

    @property
    def labels(self) -> Path:
        return self.out / LABELS_FILE

    @property
    def vocabulary(self) -> Path:
        return self.out / VOCABULARY_FILE


# ----------------------------------------------------------------------------------------- planning


def plan_corpus(config: SynthConfig) -> list[VideoPlan]:
    """The plan of every video, train first, in a fixed order."""
    plans = []
    for split_index, split in enumerate(SPLITS):
        count = config.train_videos if split == "train" else config.heldout_videos
        digits = max(3, len(str(count - 1)))
        for i in range(count):
            entropy = (config.seed, split_index, i)
            plans.append(_plan_video(f"{split}_{i:0{digits}d}", split, entropy, config))
    return plans


def _plan_video(video_id: str, split: str, entropy: tuple[int, ...], config: SynthConfig) -> VideoPlan:
    rng = np.random.default_rng(np.random.SeedSequence([*entropy, 0]))
    verbs, nouns = list(scene.VERBS), list(scene.NOUNS)
    n_segments = int(rng.integers(config.segments[0], config.segments[1] + 1))
    lo, hi = (int(round(s * 10)) for s in config.segment_seconds)
    segments, start, previous = [], 0.0, None
    for index in range(n_segments):
        length = int(rng.integers(lo, hi + 1)) / 10
        pair = previous
        while pair == previous:  # the same step twice in a row would read as one long segment
            pair = (verbs[rng.integers(len(verbs))], nouns[rng.integers(len(nouns))])
        verb, noun = pair
        action = scene.sample_action(rng, verb, noun)
        end = round(start + length, 2)
        segments.append(SegmentPlan(index, start, end, action))
        start, previous = end, (verb, noun)
    return VideoPlan(
        video_id=video_id, split=split, duration=start,
        background=scene.sample_background(rng), segments=tuple(segments), entropy=entropy,
    )


def spoken(plan: VideoPlan) -> list[speech.Sentence]:
    """The transcript of a planned video."""
    rng = np.random.default_rng(np.random.SeedSequence([*plan.entropy, 2]))
    segments = [speech.SpokenSegment(s.start, s.end, s.action.verb, s.action.noun) for s in plan.segments]
    return speech.transcript(segments, plan.duration, rng)


# ---------------------------------------------------------------------------------------- rendering


def frame_count(plan: VideoPlan, fps: int) -> int:
    return int(round(plan.duration * fps))


def iter_frames(plan: VideoPlan, size: int, fps: int) -> Iterator[np.ndarray]:
    """The video's frames in chunks of (n, size, size, 3) uint8; frame k shows time k / fps."""
    rng = np.random.default_rng(np.random.SeedSequence([*plan.entropy, 1]))
    canvas = scene.make_canvas(plan.background, size, rng)
    times = np.arange(frame_count(plan, fps)) / fps
    ends = np.array([s.end for s in plan.segments])
    owner = np.minimum(np.searchsorted(ends, times, side="right"), len(ends) - 1)
    for segment in plan.segments:
        frames = np.flatnonzero(owner == segment.index)
        for chunk in np.array_split(frames, max(1, -(-len(frames) // _CHUNK_FRAMES))):
            if len(chunk):
                local = times[chunk] - segment.start
                yield scene.render_frames(segment.action, local, canvas, rng)


def render_video(plan: VideoPlan, path: Path, config: SynthConfig) -> int:
    """Encode the planned video to an H.264 mp4 at ``path``; returns the number of frames."""
    partial = path.with_name(path.name + ".partial")
    process = start_encoder(partial, config)
    written = 0
    try:
        for chunk in iter_frames(plan, config.size, config.fps):
            process.stdin.write(chunk.tobytes())
            written += len(chunk)
        process.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg stopped reading: its message follows
    except BaseException:
        process.kill()
        process.wait()
        partial.unlink(missing_ok=True)
        raise
    stderr = process.stderr.read().decode("utf-8", "replace")
    if process.wait() != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to encode {path}: {stderr.strip()[-800:]}")
    os.replace(partial, path)
    return written


def start_encoder(path: Path, config: SynthConfig) -> subprocess.Popen:
    """An ffmpeg process that encodes rgb24 frames written to its stdin into an H.264 mp4 at ``path``."""
    stream = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{config.size}x{config.size}", r=config.fps,
    )
    # One x264 thread and bit-exact muxing: the same frames always give the same file.
    stream = ffmpeg.output(
        stream, str(path), format="mp4", vcodec="libx264", pix_fmt="yuv420p", preset="ultrafast",
        crf=config.crf, threads=1, r=config.fps, movflags="+faststart",
        **{"fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": -1},
    )
    stream = stream.global_args("-hide_banner", "-loglevel", "error").overwrite_output()
    return stream.run_async(cmd=ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True)


def _render_job(job: tuple[VideoPlan, str, SynthConfig]) -> tuple[str, int]:
    plan, path, config = job
    return plan.video_id, render_video(plan, Path(path), config)


# ----------------------------------------------------------------------------------- the JSON files


def captions_json(plans: list[VideoPlan]) -> dict[str, dict[str, list]]:
    """HowTo100M caption.json form for the given videos."""
    out = {}
    for plan in plans:
        sentences = spoken(plan)
        out[plan.video_id] = {
            "start": [s.start for s in sentences],
            "end": [s.end for s in sentences],
            "text": [s.text for s in sentences],
        }
    return out


def described(plan: VideoPlan) -> list[str]:
    """The reference sentence of each of a planned video's segments (``shards.synthetic.describe``)."""
    rng = np.random.default_rng(np.random.SeedSequence([*plan.entropy, 3]))
    return [describe.describe(s.action, plan.background, rng) for s in plan.segments]


def annotations_json(plans: list[VideoPlan]) -> dict[str, Any]:
    """YouCook2 annotations form with the true segment boundaries, labels and reference sentences."""
    database = {}
    for plan in plans:
        database[plan.video_id] = {
            "subset": SUBSETS[plan.split],
            "duration": plan.duration,
            "annotations": [
                {"id": s.index, "segment": [s.start, s.end], "sentence": sentence,
                 "verb": s.action.verb, "noun": s.action.noun}
                for s, sentence in zip(plan.segments, described(plan))
            ],
        }
    return {"database": database}


def label_rows(plans: list[VideoPlan]) -> list[dict[str, Any]]:
    return [
        {"video": p.video_id, "split": p.split, "segment": s.index, "start": s.start, "end": s.end,
         "verb": s.action.verb, "noun": s.action.noun, "sentence": sentence}
        for p in plans for s, sentence in zip(p.segments, described(p))
    ]


def vocabulary() -> dict[str, list[str]]:
    return {"verbs": list(scene.VERBS), "nouns": list(scene.NOUNS)}


def _dump(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_metadata(out: Path, plans: list[VideoPlan], config: SynthConfig) -> CorpusInfo:
    for split in SPLITS:
        in_split = [p for p in plans if p.split == split]
        _dump(out / split / CAPTIONS_FILE, captions_json(in_split))
        _dump(out / split / ANNOTATIONS_FILE, annotations_json(in_split))
    rows = label_rows(plans)
    _write_text(out / LABELS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    _dump(out / VOCABULARY_FILE, vocabulary())
    info = _info(out, plans, config)
    _dump(out / CORPUS_FILE, _corpus_record(info))  # last: marks the corpus complete
    return info


def _info(out: Path, plans: list[VideoPlan], config: SynthConfig, reused: bool = False) -> CorpusInfo:
    by_split = {split: [p for p in plans if p.split == split] for split in SPLITS}
    return CorpusInfo(
        out=out, config=config, verbs=tuple(scene.VERBS), nouns=tuple(scene.NOUNS),
        videos={s: tuple(p.video_id for p in ps) for s, ps in by_split.items()},
        segments={s: sum(len(p.segments) for p in ps) for s, ps in by_split.items()},
        seconds={s: round(sum(p.duration for p in ps), 2) for s, ps in by_split.items()},
        reused=reused,
    )


def _corpus_record(info: CorpusInfo) -> dict[str, Any]:
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "config": info.config.to_dict(),
        "verbs": list(info.verbs),
        "nouns": list(info.nouns),
        "splits": {s: {"videos": len(info.videos[s]), "segments": info.segments[s], "seconds": info.seconds[s]}
                   for s in SPLITS},
    }


# ------------------------------------------------------------------------------------ the corpus


def render_corpus(
    out: str | os.PathLike, config: SynthConfig | None = None, *, workers: int | None = None,
    overwrite: bool = False, progress: bool = True,
) -> CorpusInfo:
    """Render the corpus into ``out`` (see the module docstring for the layout) and describe it.

    A complete corpus already in ``out`` with the same ``config`` is reused as it is; one with other
    options raises ``SynthError`` unless ``overwrite`` is set. ``workers`` processes render videos in
    parallel (default: the CPU count); the output does not depend on it.
    """
    config = config or SynthConfig()
    out = Path(out)
    plans = plan_corpus(config)
    if _reusable(out, config, overwrite):
        return _info(out, plans, config, reused=True)
    _clear(out)
    for split in SPLITS:
        (out / split / VIDEOS_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out / p.split / VIDEOS_DIR / f"{p.video_id}.mp4"), config) for p in plans]
    total = sum(frame_count(p, config.fps) for p in plans)
    with tqdm(total=total, unit="frame", desc="synth", disable=not progress) as bar:
        for _, frames in _run_jobs(jobs, workers or os.cpu_count() or 1):
            bar.update(frames)
    return _write_metadata(out, plans, config)


def _run_jobs(jobs: list, workers: int) -> Iterator[tuple[str, int]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_render_job, jobs)
        return
    # Threads suffice: NumPy releases the GIL while drawing and x264 runs in its own process.
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(_render_job, jobs)


def _reusable(out: Path, config: SynthConfig, overwrite: bool) -> bool:
    record_path = out / CORPUS_FILE
    if overwrite or not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text("utf-8"))
        previous = SynthConfig.from_dict(record["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise SynthError(f"{record_path} is not a synth corpus record ({e}); use --overwrite to replace it") from None
    if record.get("format_version") != CORPUS_FORMAT_VERSION:
        return False  # written by an older version of this stage: rendered anew
    if previous != config:
        differing = sorted(k for k, v in config.to_dict().items() if previous.to_dict().get(k) != v)
        shown = ", ".join(f"{k} {previous.to_dict()[k]} -> {config.to_dict()[k]}" for k in differing)
        raise SynthError(f"{out} holds a corpus rendered with other options ({shown}); use --overwrite to replace it")
    missing = [p for p in plan_corpus(config) if not (out / p.split / VIDEOS_DIR / f"{p.video_id}.mp4").is_file()]
    return not missing


def _clear(out: Path) -> None:
    """Remove what an earlier render left (only the names this stage writes)."""
    (out / CORPUS_FILE).unlink(missing_ok=True)  # first: the folder stops counting as complete
    for split in SPLITS:
        shutil.rmtree(out / split / VIDEOS_DIR, ignore_errors=True)
        for name in (CAPTIONS_FILE, ANNOTATIONS_FILE):
            (out / split / name).unlink(missing_ok=True)
    for name in (LABELS_FILE, VOCABULARY_FILE):
        (out / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    add_config_arguments(parser, SynthConfig, {"segments": Flag(metavar=("MIN", "MAX")),
                                               "segment_seconds": Flag(metavar=("MIN", "MAX"))})
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="videos rendered at once (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus rendered with other options")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = config_from_args(SynthConfig, args)
    info = render_corpus(args.out, config, workers=args.workers, overwrite=args.overwrite)
    _print_summary(info, time.perf_counter() - started)
    return 0


def _print_summary(info: CorpusInfo, seconds: float) -> None:
    verb = "reused" if info.reused else "rendered"
    for split in SPLITS:
        print(f"{split}: {len(info.videos[split])} videos, {info.segments[split]} segments, "
              f"{info.seconds[split] / 60:.1f} min of video")
    print(f"{verb} {info.out} in {seconds:.1f} s ({len(info.verbs)} verbs, {len(info.nouns)} nouns)")

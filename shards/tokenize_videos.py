"""``videobert shards tokenize-videos``: videos + transcripts + codebook -> token shards, in one pass.

    videobert shards tokenize-videos --videos VIDEOS/ --transcripts caption.json --codebook CODEBOOK/
        --out TOKENS/ [prepare's options: --fps --size --crop --clip-len --min-last-clip --sample ...]
        [--encoder-weights s3d.pth] [--keep-features] [--device auto] [--precision auto]
        [--batch-size 64] [--workers N] [--part I/N] [--overwrite]

The full-corpus path: decoded frames are never written anywhere. Each worker process decodes one
video in one pass and cuts its caption segments into clips exactly as ``prepare`` does
(``shards.cut``), encodes the clips with the codebook's encoder and assigns their visual words
exactly as ``tokenize`` does (``shards.tokenize_clips``), and hands back token samples of a few KB;
the main process writes them in video order into token shards. The samples are those of ``prepare``
followed by ``tokenize``: the same keys, text, metadata and visual-word ids (and, with the same
``--max-samples`` and shards below ``--max-bytes``, the same shard files byte for byte). Clip shards
stay for the codebook's sample (``prepare --sample 0.002``) and for users who want them.

``--fps``, ``--size``, ``--crop`` and ``--clip-len`` must give the clips the codebook's encoder reads;
the run stops at once and names the values otherwise. ``--max-samples`` and ``--max-bytes`` bound the
token shards (at the paper's settings a token sample is thousands of times smaller than its clips;
the defaults give shards of 10,000 samples, about 30 MB).

Parts, resuming, accounting: as ``prepare`` (``--part I/N`` or the launcher's variables; positions
(video order, segment); ``errors.jsonl`` with the same reasons; ``summary.json``: segments written +
skipped = read, hours decoded; ``videobert shards status`` combines the parts). A re-run with the same
arguments continues an interrupted run; another codebook, encoder precision or option is refused.

Work. ``--workers`` processes (default: one per CPU core), each running its own ffmpeg and its own
copy of the encoder: on the CPU with ``cores / workers`` threads each; with CUDA, the workers share
the machine's GPUs (worker ``i`` on GPU ``i mod GPUs``; the encoder in bf16 with ``--precision auto``).
On a cluster start one process per node or per GPU with ``--part`` (``launch/shards.sbatch``). Memory
per worker: one batch of decoded clips (``--batch-size`` x frames of a clip) and the encoder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import multiprocessing
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from videobert.models.visual.codebook import Codebook, CodebookError
from videobert.shards import schema
from videobert.shards.cut import VideoJob, VideoResult, _cut, _sample, count_noun
from videobert.shards.decode import DecodeError, VideoDecoder, parse_crop
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.fit_features import encoder_options, process_device
from videobert.shards.folders import write_json_atomic
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.shards.parts import SummaryRules, claim_part, finish_part
from videobert.shards.prepare import (
    FLAGS as PREPARE_FLAGS, SPOOL_PREFIX, ArgumentsError, PrepareConfig, PrepareSummary, _argument_differences,
    _Counters, _execute, _input_problems, _plan_run, _Run, _start_errors, _summarize, sampled_part,
)
from videobert.shards.prepare import format_summary as prepare_summary
from videobert.shards.ranks import available_cpus
from videobert.shards.tokenize_clips import (
    BF16_SHARE_NOTED, PRECISIONS, ShardCounts, ShardJob, _Batcher, _init_worker, _tokenizer, resolve_precision,
)
from videobert.shards.transcript_entries import Problem
from videobert.shards.transcripts import Transcripts, list_transcript_files, read_transcripts
from videobert.shards.video_files import VideoFiles, inputs_fingerprint, list_videos, part_videos
from videobert.shards.writer import ShardWriter, encode_members, resume_point

STAGE = "tokenize-videos"


@dataclass(frozen=True, kw_only=True)
class TokenizeVideosConfig(PrepareConfig):
    """``prepare``'s options, and ``tokenize``'s for the encoder."""

    codebook: str
    """Codebook file, or the folder ``fit-codebook`` wrote: its encoder turns clips into visual words."""
    encoder_weights: str | None = None
    """Weights of the codebook's encoder (S3D: the Kinetics-400 checkpoint)."""
    keep_features: bool = False
    """Also store each clip's encoder features (float16)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (under a launcher, auto and cuda mean the process's own GPU)."""
    precision: str = "auto"
    """The encoder's arithmetic: fp32, bf16, or auto (bf16 on GPUs that have it, else fp32)."""
    batch_size: int = 64
    """Clips per encoder batch."""

    def __post_init__(self) -> None:
        problems = [message for ok, message in [
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
        ] if not ok]
        try:
            super().__post_init__()
        except ArgumentsError as e:
            problems.insert(0, str(e))
        if problems:
            raise ArgumentsError("; ".join(problems))

    def stats_extra(self, codebook: Codebook) -> dict[str, Any]:
        crop = parse_crop(self.crop, self.size)
        return {"kind": schema.TOKEN_KIND, "codebook_hash": codebook.hash, "features": self.keep_features,
                "fps": float(self.fps), "clip_len": self.clip_len, "frame_size": list(crop) if crop else None}


# ---------------------------------------------------------------------------------------------------
# One video -> its token samples (runs in a worker process)


@dataclass(frozen=True)
class Encoding:
    """What every worker needs to turn clips into visual words (the same for every video of a run)."""

    codebook: str
    codebook_hash: str
    options: tuple[tuple[str, Any], ...]
    keep_features: bool
    batch_size: int
    device: str
    precision: str

    def shard_job(self) -> ShardJob:
        """The settings as ``tokenize``'s batcher takes them."""
        return ShardJob(0, "", "", self.codebook, self.codebook_hash, self.options, self.keep_features,
                        self.batch_size, self.device, self.precision)


@dataclass(frozen=True)
class TokenMembers:
    """One token sample's tar members, ready to be appended to a shard."""

    members: bytes
    clips: int


class _Collected:
    """Stands where ``tokenize``'s batcher expects its shard writer: keeps the token samples' members."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, TokenMembers]] = []

    def write(self, sample: schema.Sample, position) -> None:
        self.samples.append((sample.meta.segment_index, TokenMembers(encode_members(sample), sample.meta.n_clips)))


_CHECKS: dict[str, ShardCounts] = {}
"""bf16 runs: the worker's fp32 check (its first batch, once per process), reported on stderr."""


def tokenize_video(encoding: Encoding, job: VideoJob) -> VideoResult:
    """Decode one video, encode its segments' clips and assign their visual words; the token samples'
    members in segment order (``VideoResult.samples`` holds ``(segment, TokenMembers)``).

    As in ``prepare``, a video that cannot be decoded (or whose clips the codebook's encoder cannot
    read, or that fails in a way nobody foresaw) loses all its segments and the run goes on; an
    encoder that cannot be built at all stops the run.
    """
    settings = encoding.shard_job()
    tokenizer = _tokenizer(settings)
    result = VideoResult(job.order)
    decoder = VideoDecoder(job.path, job.decode)
    collected = _Collected()
    counts = _CHECKS.setdefault("worker", ShardCounts(source="worker"))
    checked = counts.fp32_check_clips
    batcher = _Batcher(tokenizer, collected, settings, counts)
    try:
        for plan, clips, frames, end in _cut(job, decoder, result.problems):
            if plan.segment.index > job.written_through:
                sample = _sample(job, plan.segment, clips, frames.copy(), end)  # the decoder reuses its buffer
                meta = sample.meta
                tokenizer.codebook.check_clips(fps=meta.fps, clip_len=meta.clip_len, frame_size=meta.frame_size,
                                               where=job.path)
                batcher.add(sample)
        batcher.flush()
        result.samples = collected.samples
    except Exception as e:  # noqa: BLE001 - one video's failure must not end a run over many
        result = _lost(job, e)
    result.frames = decoder.frames_read
    if checked == 0 and counts.fp32_check_clips:
        _report_fp32_check(counts)
    return result


def _lost(job: VideoJob, error: Exception) -> VideoResult:
    unforeseen = not isinstance(error, (DecodeError, CodebookError))
    if unforeseen:
        traceback.print_exc()
    reason = f"unexpected {type(error).__name__} while tokenizing it: {error}" if unforeseen else str(error)
    lost = sum(1 for plan in job.plans if plan.segment.index > job.written_through)
    return VideoResult(job.order, problems=[Problem(
        input=job.path, video_id=job.video_id, segment=None, segments=lost,
        reason=f"{reason}; {count_noun(lost, 'caption segment')} skipped",
    )])


def _report_fp32_check(counts: ShardCounts) -> None:
    share = counts.fp32_check_differ / counts.fp32_check_clips
    print(f"videobert shards {STAGE}: bf16 gave {counts.fp32_check_differ} of {counts.fp32_check_clips} clips "
          f"another visual word than fp32 ({100 * share:.2f} %)"
          + ("; consider --precision fp32" if share > BF16_SHARE_NOTED else ""), file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Main side: prepare's run, writing token samples instead of copying spooled clips


class _TokenRun(_Run):
    """Prepare's bookkeeping (order, resume point, counters carried in each sample's state)."""

    def _copy(self, order: int, samples: list[tuple[int, TokenMembers]], counted: bool) -> None:
        state = self.state_after(counted)
        for segment_index, token in samples:
            self.writer.write_members(token.members, (order, segment_index), clips=token.clips, state=state)


@dataclass
class TokenizeVideosSummary(PrepareSummary):
    """``summary.json``: prepare's figures (``bytes`` are token shard bytes) and the codebook."""

    codebook_hash: str = ""
    precision: str = "fp32"
    features: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}


SUMMARY_RULES = SummaryRules(
    accounting=("segments_read", "segments_written", "segments_skipped"),
    throughput=("frames_per_second", "frames/s"), rates={"frames_per_second": ("frames_decoded", "wall_seconds")},
)
"""How the parts' summaries combine (``shards.parts``)."""


def tokenize_videos(config: TokenizeVideosConfig) -> TokenizeVideosSummary:
    """Run the stage, or this process's part of it (library entry point; ``run`` is the command line's).
    Raises ``ArgumentsError`` (a ``VideoBertError``) when the run cannot start as asked."""
    ffmpeg_exe()
    part = sampled_part(config)
    codebook = _codebook(config)
    device = process_device(config.device, part)
    encoding = Encoding(str(config.codebook), codebook.hash, tuple(sorted(encoder_options(config.encoder_weights).items())),
                        config.keep_features, config.batch_size, _device_name(device),
                        resolve_precision(config.precision, device))
    videos = part_videos(list_videos(config.videos), part)
    listing = list_transcript_files(config.transcripts)
    record = {
        "stage": STAGE, "format_version": schema.FORMAT_VERSION,
        "arguments": {**config.arguments(), "codebook_hash": codebook.hash, "keep_features": config.keep_features,
                      "precision": encoding.precision},
        "inputs": {"videos": len(videos.videos), "transcript_files": len(listing.files),
                   "fingerprint": inputs_fingerprint(videos.videos, listing.files)},
    }
    out = Path(config.out)
    ignored = len(videos.ignored | listing.ignored) if part.first else 0
    with _worker_pool(config, device) as pool:
        # The encoder is built in a worker first (a wrong weights file fails before anything is written),
        # and the workers start before the transcripts are read: they never hold the captions.
        pool.submit(_build_encoder, encoding).result()
        folder, finished = claim_part(out, record, part, overwrite=config.overwrite, stage=STAGE,
                                      argument_differences=_differences, error=ArgumentsError,
                                      extra_patterns=(f"{SPOOL_PREFIX}*",))
        if finished:
            return TokenizeVideosSummary.read(folder / schema.SUMMARY_FILE)
        transcripts = read_transcripts(config.transcripts, config.transcript_format, language=config.language,
                                       part=part, max_segment_seconds=config.max_segment_seconds)
        summary = _tokenize_part(config, folder, videos, transcripts, ignored, pool, encoding, codebook)
    finish_part(out, part, SUMMARY_RULES)
    return summary


def _codebook(config: TokenizeVideosConfig) -> Codebook:
    try:
        codebook = Codebook.load(config.codebook)
    except CodebookError as e:
        raise ArgumentsError(str(e)) from None
    crop = parse_crop(config.crop, config.size)
    if crop is not None:
        try:
            codebook.check_clips(fps=config.fps, clip_len=config.clip_len, frame_size=crop,
                                 where="--fps, --size, --crop and --clip-len")
        except CodebookError as e:
            spec = codebook.spec
            raise ArgumentsError(f"{e} (give --fps {spec.fps:g} --clip-len {spec.clip_len} and a --size/--crop of "
                                 f"{spec.frame_size[0]}x{spec.frame_size[1]})") from None
    return codebook


def _device_name(device: torch.device) -> str:
    return device.type if device.type == "cuda" and device.index is None else str(device)


def _build_encoder(encoding: Encoding) -> None:
    """Build the worker's encoder (runs in a worker); one that cannot be built stops the run at once."""
    try:
        _tokenizer(encoding.shard_job())
    except (ValueError, TypeError, CodebookError) as e:  # unknown encoder or option, missing or wrong weights
        raise ArgumentsError(f"cannot build the encoder codebook {encoding.codebook} names: {e}") from None


def _differences(previous: dict[str, Any], record: dict[str, Any]) -> list[str]:
    old, new = previous.get("arguments", {}), record["arguments"]
    found = [f"its token shards were made with codebook {old.get('codebook_hash')}, this run's codebook is "
             f"{new['codebook_hash']}"] if old.get("codebook_hash") != new["codebook_hash"] else []
    return found + _argument_differences(previous, record)


@contextlib.contextmanager
def _worker_pool(config: TokenizeVideosConfig, device: torch.device) -> Iterator[concurrent.futures.Executor]:
    """Worker processes with the encoder, ``cores / workers`` threads each; with CUDA, worker ``i`` on GPU
    ``i mod GPUs``. They are spawned, not forked: a fork of a process that has run torch operations (a
    library caller's) can deadlock in the child's thread pool. Starting costs each worker an import of
    torch (seconds), once per run."""
    gpus = device.type == "cuda" and device.index is None
    context = multiprocessing.get_context("spawn")
    queue = None
    if gpus:
        queue = context.Queue()
        for i in range(config.workers):
            queue.put(f"cuda:{i % torch.cuda.device_count()}")
    threads = 1 if gpus else max(1, available_cpus() // config.workers)
    with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker,
                                                initargs=(threads, queue)) as pool:
        yield pool


def _tokenize_part(config: TokenizeVideosConfig, out: Path, videos: VideoFiles, transcripts: Transcripts, ignored: int,
                   pool: concurrent.futures.Executor, encoding: Encoding, codebook: Codebook) -> TokenizeVideosSummary:
    """Tokenize this part's videos into ``out``, resuming where an earlier run of it stopped."""
    resume = resume_point(out)
    order, segment = resume.last_position if resume.last_position is not None else (0, -1)
    work = _plan_run(config, videos.videos, transcripts)
    errors = _start_errors(out, _input_problems(videos.videos, videos.duplicates, transcripts), order,
                           resumed=resume.last_position is not None)
    counters = _Counters.from_state(resume.last_state)
    writer = ShardWriter(out, max_samples=config.max_samples, max_bytes=config.max_bytes, start_index=resume.next_index,
                         extra=config.stats_extra(codebook), before_finish=errors.sync)
    run = _TokenRun(writer, errors, counters, out, order, segment, wall_before=counters.wall_seconds)
    try:
        with writer:
            _execute(config, work, run, pool, worker=functools.partial(tokenize_video, encoding))
    finally:
        errors.close()
    unmatched = len(transcripts.segments.keys() - {v.video_id for v in videos.videos})
    videos_read = len(videos.videos) + len(videos.duplicates) + unmatched
    base = _summarize(out, config, run.counters, videos_read, transcripts, ignored, resume.shards + writer.finished)
    summary = TokenizeVideosSummary(**asdict(base), codebook_hash=codebook.hash, precision=encoding.precision,
                                    features=config.keep_features)
    write_json_atomic(out / schema.SUMMARY_FILE, summary.to_json())
    return summary


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TokenizeVideosConfig, {
        **PREPARE_FLAGS, "codebook": Flag(metavar="PATH"), "encoder_weights": Flag(metavar="PATH"),
        "precision": Flag(choices=PRECISIONS),
    })


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TokenizeVideosConfig, args)
    part = config.resolve_part()
    if not part.whole:
        print(f"videobert shards {STAGE}: part {part} (from {part.source})", file=sys.stderr)
    summary = tokenize_videos(config)
    print(format_summary(summary, part.folder(args.out)))
    nothing_to_do = not part.whole and summary.videos_read == 0
    return 0 if summary.segments_written > 0 or nothing_to_do else 1


def format_summary(summary: TokenizeVideosSummary, out: Path) -> str:
    """The printed summary: prepare's, with the codebook."""
    lines = prepare_summary(summary, out).splitlines()
    lines[0] = lines[0].replace("prepared", "tokenized", 1) + f", codebook {summary.codebook_hash}"
    return "\n".join(lines)

"""``videobert shards tokenize``: clip shards -> token shards (one visual word per clip instead of its frames).

    videobert shards tokenize --clips CLIPS/ --codebook CODEBOOK/ --out TOKENS/
        [--encoder-weights s3d.pth] [--keep-features] [--workers N] [--device auto] [--batch-size 64]
        [--precision auto] [--part I/N]

Each input clip shard becomes one token shard of the same index (``shard-000003.tar`` of the inputs,
in the order the spec resolves to, gives ``shard-000003.tar`` of the output) with the same keys,
text and metadata; metadata ``kind`` becomes ``tokens`` and ``codebook_hash`` records the codebook;
the frames are replaced by the clips' visual-word ids (``tokens.npy``, int32), and with
``--keep-features`` by the encoder's features too (``features.npy``, float16). The encoder is the one
the codebook names (S3D needs ``--encoder-weights``).

Work. Input shards are spread over ``--workers`` processes (default: one per CPU core, each with one
thread; with CUDA, one per GPU). Output bytes do not depend on the number of workers. On a cluster,
start one process per GPU (torchrun, srun; ``launch/shards.sbatch``): each takes its part of the
shards (``--part I/N`` or the launcher's variables; input shard ``i`` goes to part ``i mod N``, into
``OUT/part-NNNNN/shard-00000i.tar``) and its own GPU. On GPUs the encoder runs in bf16
(``--precision auto``); the first batch of every shard is then encoded in fp32 as well, and the share
of clips whose visual word differs is reported. Throughput is reported per worker (per GPU).

Resuming. An output shard is written as ``.partial``, renamed when complete, and then committed by
its stats file (which also holds its counts and its problems). A re-run with the same arguments
keeps the committed shards and redoes the rest; a re-run with other inputs or another codebook stops
and says so (``--overwrite`` starts over).

Bad input never stops the run: a sample of another shard format version, a truncated shard, an
empty or undecodable sample, a token shard given as input, or clips prepared at another fps / clip
length / frame size than the codebook's encoder expects are each listed in ``errors.jsonl`` (with
the shard, key and reason) and counted; ``summary.json`` adds up (samples written + skipped = read).
A shard that fails in any other way (a worker killed, a disk error) is listed in ``errors.jsonl``
and not committed: the run goes on, and a re-run retries it. Exit status: 0 when samples were
written (or a part was given no shard) and no shard failed, 1 when none could be written or some
shard failed, 2 when the arguments are wrong.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from videobert.models.errors import VideoBertError
from videobert.models.visual.codebook import Codebook, CodebookError
from videobert.models.visual.tokenizer import VisualTokenizer
from videobert.shards import reader, schema, storage
from videobert.shards.fit_features import encoder_options, process_device
from videobert.shards.folders import ErrorLog, write_json_atomic
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.shards.parts import Part, PartOption, SummaryRules, claim_part, finish_part
from videobert.shards.ranks import available_cpus
from videobert.shards.writer import ShardStats, ShardWriter, tar_size

STAGE = "tokenize"


PRECISIONS = ("auto", "fp32", "bf16")
BF16_SHARE_NOTED = 0.05
"""Above this share of clips whose visual word differs from fp32's, the summary suggests fp32."""


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig(PartOption):
    """Everything the stage needs; validated on construction."""

    clips: tuple[str, ...]
    """Clip shards: folders, tar files, globs, brace patterns or ``pipe:`` commands."""
    codebook: str
    """Codebook file, or the folder ``fit-codebook`` wrote."""
    out: str
    """Output folder for token shards, stats, errors.jsonl, summary.json, run.json."""
    encoder_weights: str | None = None
    """Weights of the codebook's encoder (S3D: the Kinetics-400 checkpoint)."""
    keep_features: bool = False
    """Also store each clip's encoder features (float16)."""
    workers: int | None = None
    """Processes; default: one per GPU with CUDA (one in all under a launcher, which starts a process per
    GPU), else one per CPU core."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (under a launcher, auto and cuda mean the process's own GPU)."""
    precision: str = "auto"
    """The encoder's arithmetic: fp32, bf16, or auto (bf16 on GPUs that have it, else fp32). With bf16
    the first batch of every shard is also encoded in fp32, and the share of clips whose token differs
    is reported."""
    batch_size: int = 64
    """Clips per encoder batch."""
    overwrite: bool = False
    """Delete the output folder's previous run and start over."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        problems = [message for ok, message in [
            (bool(self.clips), "no --clips given"),
            (self.workers is None or self.workers >= 1, "--workers must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (storage.is_remote(self.out) or not Path(self.out).is_file(), f"--out {self.out} is a file; give a folder"),
        ] if not ok] + self.part_problems()
        if problems:
            raise VideoBertError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# One input shard -> one output shard (runs in a worker process, or inline)


@dataclass(frozen=True)
class ShardJob:
    index: int
    url: str
    out: str
    codebook: str
    codebook_hash: str
    options: tuple[tuple[str, Any], ...]
    """Encoder options (e.g. the weights file)."""
    keep_features: bool
    batch_size: int
    device: str
    """``cpu``, ``cuda`` (the worker's GPU) or an explicit device."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (resolved)."""


@dataclass
class ShardCounts:
    """What one output shard accounts for; stored in its stats file."""

    source: str
    samples_read: int = 0
    samples_written: int = 0
    samples_skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    fp32_check_clips: int = 0
    """bf16 runs: clips of the shard's first batch encoded in fp32 too."""
    fp32_check_differ: int = 0
    """Of those, clips whose visual word differs from fp32's."""
    errors: list[dict[str, Any]] = field(default_factory=list)

    def problem(self, reason: str, key: str | None, samples: int) -> None:
        self.errors.append({"stage": STAGE, "input": self.source, "key": key, "samples": samples, "reason": reason})
        self.samples_skipped += samples


_TOKENIZERS: dict[tuple, VisualTokenizer] = {}
_WORKER_DEVICE: str | None = None


def tokenize_shard(job: ShardJob) -> ShardCounts:
    """Tokenize one clip shard into the output shard of the same index."""
    started = time.perf_counter()
    tokenizer = _tokenizer(job)
    counts = ShardCounts(source=job.url)
    writer = ShardWriter(job.out, start_index=job.index, extra=_stats_extra(job, counts))
    with writer:
        batcher = _Batcher(tokenizer, writer, job, counts)
        for raw in reader.iter_raw_samples([job.url], on_error=lambda url, e: counts.problem(str(e), None, 0)):
            counts.samples_read += 1
            sample = _usable(raw, tokenizer.codebook, counts)
            if sample is not None:
                batcher.add(sample)
        batcher.flush()
        counts.seconds = time.perf_counter() - started
        writer.extra.update(_stats_extra(job, counts))  # the stats file is written when the shard closes
    if not writer.finished and counts.samples_read == 0 and counts.errors:
        _commit_refused(Path(job.out), job.index, _stats_extra(job, counts))
    elif not writer.finished:
        _write_empty_shard(Path(job.out), job.index, _stats_extra(job, counts))
    return counts


def _tokenizer(job: ShardJob) -> VisualTokenizer:
    """The process's tokenizer for this codebook and device (built once per process)."""
    device = _WORKER_DEVICE if (job.device == "cuda" and _WORKER_DEVICE) else job.device
    key = (job.codebook, job.codebook_hash, device, job.options)
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()  # one at a time: a long-lived process may go through many codebooks
        tokenizer = VisualTokenizer.from_codebook(job.codebook, **dict(job.options)).to(device)
        if tokenizer.codebook_hash != job.codebook_hash:
            raise CodebookError(
                f"{job.codebook} changed during the run (hash {tokenizer.codebook_hash}, was {job.codebook_hash})"
            )
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def _usable(raw: dict[str, Any], codebook: Codebook, counts: ShardCounts) -> schema.Sample | None:
    """The decoded clip sample, or None after recording why it cannot be tokenized."""
    key = str(raw.get("__key__", "?"))
    where = f"{raw.get('__url__', counts.source)}:{key}"
    try:
        sample = schema.decode_sample(raw)
        if sample.meta.kind != schema.CLIP_KIND:
            raise schema.ShardFormatError(f"{where}: a {sample.meta.kind} sample; tokenize reads clip shards")
        meta = sample.meta
        codebook.check_clips(fps=meta.fps, clip_len=meta.clip_len, frame_size=meta.frame_size, where=where)
    except (schema.ShardFormatError, CodebookError) as e:
        counts.problem(str(e), key, 1)
        return None
    return sample


class _Batcher:
    """Gathers clips of consecutive samples into encoder batches; writes each sample's tokens in order."""

    def __init__(self, tokenizer: VisualTokenizer, writer: ShardWriter, job: ShardJob, counts: ShardCounts):
        self.tokenizer, self.writer, self.job, self.counts = tokenizer, writer, job, counts
        self.pending: list[schema.Sample] = []
        self.pending_clips = 0

    def add(self, sample: schema.Sample) -> None:
        self.pending.append(sample)
        self.pending_clips += sample.meta.n_clips
        if self.pending_clips >= self.job.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        frames = np.concatenate([s.frames for s in self.pending])  # (clips, T, H, W, 3)
        size = self.job.batch_size
        features = torch.cat([self._encode(frames[i: i + size]) for i in range(0, len(frames), size)])  # (clips, D)
        ids = self.tokenizer.assign(features).cpu().numpy().astype(schema.TOKENS_DTYPE)
        if self.job.precision == "bf16" and self.counts.fp32_check_clips == 0:
            self._check_against_fp32(frames[:size], ids[:size])
        features = features.cpu().numpy().astype(schema.FEATURES_DTYPE) if self.job.keep_features else None
        start = 0
        for sample in self.pending:
            stop = start + sample.meta.n_clips
            self._write(sample, ids[start:stop], None if features is None else features[start:stop])
            start = stop
        self.pending, self.pending_clips = [], 0

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """Features (B, D) float32 of clips (B, T, H, W, 3), computed in the job's precision."""
        clips = torch.from_numpy(frames)
        if self.job.precision != "bf16":
            return self.tokenizer.encode(clips)
        with torch.autocast(self.tokenizer.device.type, dtype=torch.bfloat16):
            return self.tokenizer.encode(clips).float()

    def _check_against_fp32(self, frames: np.ndarray, ids: np.ndarray) -> None:
        """Encode one batch in fp32 too: how many clips bf16 gives another visual word."""
        reference = self.tokenizer.assign(self.tokenizer.encode(torch.from_numpy(frames))).cpu().numpy()
        self.counts.fp32_check_clips += len(ids)
        self.counts.fp32_check_differ += int((reference != ids).sum())

    def _write(self, sample: schema.Sample, ids: np.ndarray, features: np.ndarray | None) -> None:
        meta = dataclasses.replace(sample.meta, kind=schema.TOKEN_KIND, codebook_hash=self.job.codebook_hash)
        tokens = schema.Sample(key=sample.key, text=sample.text, meta=meta, tokens=ids, features=features)
        self.counts.samples_written += 1
        self.counts.clips += sample.meta.n_clips
        self.writer.write(tokens, (self.counts.samples_written,))


def _stats_extra(job: ShardJob, counts: ShardCounts) -> dict[str, Any]:
    return {
        "kind": schema.TOKEN_KIND, "codebook_hash": job.codebook_hash, "features": job.keep_features,
        "source": counts.source, "samples_read": counts.samples_read, "samples_skipped": counts.samples_skipped,
        "seconds": counts.seconds, "precision": job.precision, "fp32_check_clips": counts.fp32_check_clips,
        "fp32_check_differ": counts.fp32_check_differ, "errors": counts.errors,
    }


def _commit_refused(out: Path, index: int, extra: dict[str, Any]) -> None:
    """An input refused whole (not a plain tar, unreadable) is committed by its stats file alone: no
    output shard, empty or not, for a reader to find; its reason is in the stats and errors.jsonl."""
    final = out / schema.shard_name(index)
    final.unlink(missing_ok=True)
    stats = ShardStats(shard=final.name, samples=0, clips=0, bytes=0, first_position=(), last_position=(),
                       extra={**extra, "refused": True})
    write_json_atomic(schema.stats_path(final), stats.to_json())


def _write_empty_shard(out: Path, index: int, extra: dict[str, Any]) -> None:
    """A committed shard without samples: the input was read, and nothing in it could be used."""
    final = out / schema.shard_name(index)
    partial = final.with_name(final.name + schema.PARTIAL_SUFFIX)
    partial.write_bytes(bytes(tar_size(0)))  # an empty tar: the end-of-archive blocks only
    os.replace(partial, final)
    stats = ShardStats(shard=final.name, samples=0, clips=0, bytes=final.stat().st_size,
                       first_position=(), last_position=(), extra=extra)
    storage.published(final)
    write_json_atomic(schema.stats_path(final), stats.to_json())


# ---------------------------------------------------------------------------------------------------
# The output folder: run.json, starting over, resuming


def _argument_differences(previous: dict[str, Any], record: dict[str, Any]) -> list[str]:
    old, new = previous.get("arguments", {}), record["arguments"]
    found = []
    if old.get("codebook_hash") != new["codebook_hash"]:
        found.append(f"its token shards were made with codebook {old.get('codebook_hash')}, this run's codebook is "
                     f"{new['codebook_hash']}")
    if old.get("clips") != new["clips"]:
        found.append(f"it read {len(old.get('clips') or [])} other clip shards")
    if old.get("keep_features") != new["keep_features"]:
        found.append(f"--keep-features was {old.get('keep_features')}, now {new['keep_features']}")
    if old.get("precision", "fp32") != new["precision"]:  # folders written before bf16 were fp32
        found.append(f"its tokens were computed in {old.get('precision', 'fp32')}, this run's in {new['precision']}")
    return found


def _refused(tar: Path) -> bool:
    return bool(ShardStats.read(schema.stats_path(tar)).extra.get("refused"))


def finished_shards(out: Path, indices: list[int]) -> dict[int, ShardStats]:
    """Committed output shards by index, after removing what an interrupted run left half-done."""
    for leftover in out.glob(f"*{schema.PARTIAL_SUFFIX}"):
        leftover.unlink()
    done = {}
    for index in indices:
        tar = out / schema.shard_name(index)
        if schema.stats_path(tar).is_file() and (tar.is_file() or _refused(tar)):
            done[index] = ShardStats.read(schema.stats_path(tar))
        elif tar.exists():
            tar.unlink()  # renamed but not committed: redo it
    return done


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class TokenizeSummary:
    """``summary.json``: the whole output folder, or a part's (resumed runs included)."""

    codebook_hash: str
    shards_read: int
    shards_written: int
    shards_kept: int
    """Shards committed by an earlier run and not redone."""
    samples_read: int
    samples_written: int
    samples_skipped: int
    clips: int
    bytes: int
    features: bool
    errors_lines: int
    seconds: float
    clips_per_second: float
    """Per worker (per GPU on GPUs): clips / worker_seconds."""
    worker_seconds: float = 0.0
    """Seconds the workers spent on the shards written."""
    shards_failed: int = 0
    """Shards whose tokenizing failed in a way no sample check foresaw (listed in errors.jsonl; a re-run
    retries them)."""
    precision: str = "fp32"
    fp32_check_clips: int = 0
    fp32_check_differ: int = 0
    fp32_check_share: float = 0.0
    """bf16 runs: the share of the clips checked whose visual word differs from fp32's."""

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}


SUMMARY_RULES = SummaryRules(
    accounting=("samples_read", "samples_written", "samples_skipped"),
    throughput=("clips_per_second", "clips/s per worker"),
    rates={"clips_per_second": ("clips", "worker_seconds"), "fp32_check_share": ("fp32_check_differ", "fp32_check_clips")},
)
"""How the parts' summaries combine (``shards.parts``)."""


@dataclass(frozen=True)
class Failure:
    """A shard whose tokenizing raised: listed in errors.jsonl, not committed (a re-run retries it)."""

    url: str
    reason: str

    def line(self) -> dict[str, Any]:
        return {"stage": STAGE, "input": self.url, "key": None, "samples": 0,
                "reason": f"tokenizing the shard failed ({self.reason}); its samples are not written: re-run to retry it"}


def tokenize(config: TokenizeConfig) -> TokenizeSummary:
    """Run the stage, or this process's part of it (library entry point; ``run`` is the command line's).
    Raises ``VideoBertError``."""
    started = time.perf_counter()
    part = config.resolve_part()
    urls, codebook = _inputs(config)
    device = process_device(config.device, part)
    precision = resolve_precision(config.precision, device)
    options = tuple(sorted(encoder_options(config.encoder_weights).items()))
    with storage.working_folder(config.out) as out:  # a bucket's prefix: worked locally, uploaded as committed
        return _tokenize_into(config, Path(out), part, urls, codebook, device, precision, options, started)


def _tokenize_into(config: TokenizeConfig, out: Path, part: Part, urls: list[str], codebook: Codebook,
                   device: torch.device, precision: str, options: tuple, started: float) -> TokenizeSummary:
    record = {"stage": STAGE, "format_version": schema.FORMAT_VERSION, "arguments": {
        "clips": urls, "codebook_hash": codebook.hash, "keep_features": config.keep_features, "precision": precision}}
    folder, _ = claim_part(out, record, part, overwrite=config.overwrite, stage=STAGE,
                           argument_differences=_argument_differences, error=VideoBertError)
    mine = [i for i in range(len(urls)) if part.owns_shard(i)]
    kept = finished_shards(folder, mine)
    jobs = [
        ShardJob(i, urls[i], str(folder), storage.local_file(config.codebook), codebook.hash, options,
                 config.keep_features, config.batch_size,
                 device.type if device.type == "cuda" and device.index is None else str(device), precision)
        for i in mine if i not in kept
    ]
    _build_first(jobs, config)
    failures = _execute(jobs, config, device, len(mine), len(kept))
    summary = _summarize(folder, urls, mine, codebook, len(kept), config.keep_features, precision, failures,
                         time.perf_counter() - started)
    finish_part(out, part, SUMMARY_RULES)
    return summary


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA GPU that has it, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _inputs(config: TokenizeConfig) -> tuple[list[str], Codebook]:
    try:
        return reader.resolve_shards(list(config.clips)), Codebook.load(storage.local_file(config.codebook))
    except (reader.ShardSpecError, CodebookError) as e:
        raise VideoBertError(str(e)) from None


def _build_first(jobs: list[ShardJob], config: TokenizeConfig) -> None:
    """Build the tokenizer here before any worker starts, so a wrong weights file fails at once."""
    if not jobs:
        return
    job = dataclasses.replace(jobs[0], device="cpu" if jobs[0].device == "cuda" else jobs[0].device)
    try:
        _tokenizer(job)
    except (ValueError, TypeError, CodebookError) as e:  # unknown encoder or option, missing or wrong weights
        raise VideoBertError(f"cannot build the encoder codebook {config.codebook} names: {e}") from None


def _workers(config: TokenizeConfig, device: torch.device) -> tuple[int, list[str] | None]:
    """(processes, the GPU of each, or None on the CPU) for this machine."""
    if device.type == "cuda" and device.index is None:
        gpus = torch.cuda.device_count()
        workers = config.workers or gpus
        return workers, [f"cuda:{i % gpus}" for i in range(workers)]
    if device.type != "cpu":
        return config.workers or 1, None  # one named accelerator (a launcher's GPU for this process)
    return config.workers or available_cpus(), None


def _execute(jobs: list[ShardJob], config: TokenizeConfig, device: torch.device, total: int, kept: int) -> list[Failure]:
    """Tokenize the jobs' shards; the shards that failed, each with why."""
    workers, devices = _workers(config, device)
    bar = tqdm(total=total, initial=kept, unit="shard", desc="tokenize", disable=not config.progress)
    clips, started = 0, time.perf_counter()
    failures: list[Failure] = []

    def done(job: ShardJob, counts: ShardCounts | None, failure: str | None = None) -> None:
        nonlocal clips
        if failure is not None:
            failures.append(Failure(job.url, failure))
            print(f"videobert shards tokenize: {job.url}: {failure}", file=sys.stderr)
        clips += counts.clips if counts else 0
        bar.update(1)
        bar.set_postfix_str(f"{clips / max(time.perf_counter() - started, 1e-9):.0f} clips/s")

    try:
        if workers == 1 or len(jobs) <= 1:
            _set_worker_device(devices[0] if devices else None)
            for job in jobs:
                _inline(job, done)
        else:
            _in_pool(jobs, workers, devices, done)
    finally:
        bar.close()
    return failures


def _inline(job: ShardJob, done) -> None:
    try:
        counts = tokenize_shard(job)
    except Exception as e:  # noqa: BLE001 - one shard's failure must not end a run over many
        done(job, None, _described(e))
        return
    done(job, counts)


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _in_pool(jobs: list[ShardJob], workers: int, devices: list[str] | None, done) -> None:
    # spawn, not fork: the workers run torch, whose thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for name in devices or []:
        queue.put(name)
    threads = 1 if devices else max(1, available_cpus() // workers)
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(threads, queue if devices else None)
    ) as pool:
        futures = {pool.submit(tokenize_shard, job): job for job in jobs}
        try:
            for future in concurrent.futures.as_completed(futures):
                _collect(future, futures[future], done)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _collect(future: concurrent.futures.Future, job: ShardJob, done) -> None:
    try:
        counts = future.result()
    except concurrent.futures.process.BrokenProcessPool:
        done(job, None, "a worker process died (killed, or out of memory) while this shard was in the pool")
        return
    except Exception as e:  # noqa: BLE001 - raised by tokenize_shard in the worker: that shard's failure
        done(job, None, _described(e))
        return
    done(job, counts)


def _init_worker(threads: int, devices) -> None:
    torch.set_num_threads(threads)
    _set_worker_device(devices.get() if devices is not None else None)


def _set_worker_device(name: str | None) -> None:
    """The GPU this process runs jobs marked ``cuda`` on."""
    global _WORKER_DEVICE
    _WORKER_DEVICE = name


def _summarize(
    out: Path, urls: list[str], mine: list[int], codebook: Codebook, kept: int, features: bool, precision: str,
    failures: list[Failure], seconds: float,
) -> TokenizeSummary:
    """Figures of the folder (or part) from the shards' stats files; errors.jsonl rewritten from them
    and from the shards that failed."""
    committed = finished_shards(out, mine)
    stats = [committed[i] for i in mine if i in committed]
    lines = [line for s in stats for line in s.extra.get("errors", [])] + [f.line() for f in failures]
    ErrorLog(out / schema.ERRORS_FILE, lines).close()
    written = sum(s.samples for s in stats)
    worker_seconds = sum(s.extra["seconds"] for s in stats)
    checked, differ = (sum(s.extra.get(name, 0) for s in stats) for name in ("fp32_check_clips", "fp32_check_differ"))
    summary = TokenizeSummary(
        codebook_hash=codebook.hash, shards_read=len(mine), shards_written=sum(not s.extra.get("refused") for s in stats), shards_kept=kept,
        samples_read=sum(s.extra["samples_read"] for s in stats), samples_written=written,
        samples_skipped=sum(s.extra["samples_skipped"] for s in stats), clips=sum(s.clips for s in stats),
        bytes=sum(s.bytes for s in stats), features=features, errors_lines=len(lines), seconds=seconds,
        clips_per_second=sum(s.clips for s in stats) / max(worker_seconds, 1e-9), worker_seconds=worker_seconds,
        shards_failed=len(failures), precision=precision, fp32_check_clips=checked, fp32_check_differ=differ,
        fp32_check_share=differ / checked if checked else 0.0,
    )
    if summary.samples_written + summary.samples_skipped != summary.samples_read:
        raise RuntimeError(
            f"sample accounting does not add up: {summary.samples_written} written + {summary.samples_skipped} "
            f"skipped != {summary.samples_read} read (a bug: please report it)"
        )
    write_json_atomic(out / schema.SUMMARY_FILE, summary.to_json())
    return summary


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TokenizeConfig, {
        "clips": Flag(metavar="SPEC"), "codebook": Flag(metavar="PATH"), "out": Flag(metavar="FOLDER"),
        "encoder_weights": Flag(metavar="PATH"), "precision": Flag(choices=PRECISIONS),
    })


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TokenizeConfig, args)
    part = config.resolve_part()
    if not part.whole:
        print(f"videobert shards tokenize: part {part} (from {part.source})", file=sys.stderr)
    summary = tokenize(config)
    print(format_summary(summary, part.folder(args.out)))
    nothing_to_do = summary.shards_read == 0  # a part of a run with fewer shards than parts
    return 0 if (summary.samples_written > 0 or nothing_to_do) and not summary.shards_failed else 1


def format_summary(s: TokenizeSummary, out: Path) -> str:
    """The printed summary."""
    lines = [
        f"tokenized {out}: {s.shards_written} shards ({s.shards_kept} kept from an earlier run), "
        f"{s.samples_written} samples, {s.clips} clips, codebook {s.codebook_hash}",
        f"  samples  read {s.samples_read} = written {s.samples_written} + skipped {s.samples_skipped}",
        f"  time     {s.seconds:.1f} s ({s.clips_per_second:.1f} clips/s per worker), encoder in {s.precision}",
    ]
    if s.fp32_check_clips:
        lines.append(f"  bf16     {s.fp32_check_differ} of {s.fp32_check_clips} clips checked against fp32 got "
                     f"another visual word ({100 * s.fp32_check_share:.2f} %)")
        if s.fp32_check_share > BF16_SHARE_NOTED:
            lines.append("           more than the codebook should tolerate: consider --precision fp32 (the codebook "
                         "was fitted on fp32 features)")
    if s.shards_failed:
        lines.append(f"  {s.shards_failed} shards FAILED (see {out / schema.ERRORS_FILE}); re-run to retry them")
    if s.errors_lines:
        lines.append(f"  {s.errors_lines} problems listed in {out / schema.ERRORS_FILE}")
    if s.samples_written == 0:
        lines.append("  nothing could be tokenized: no sample matched (see the problems above)")
    return "\n".join(lines)

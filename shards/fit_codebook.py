"""``videobert shards fit-codebook``: clip shards -> frozen clip encoder -> hierarchical k-means -> codebook.

    videobert shards fit-codebook --clips CLIPS/ --out CODEBOOK/ [--encoder s3d --encoder-weights s3d.pth]
        [--num-clips 100000] [--depth 4] [--branching 12] [--seed 0] [--batch-size 32] [--device auto]

1. Sample ``--num-clips`` clips spread over the clip shards: each shard contributes in proportion to
   its clips (read from its stats file; shards without one are counted by a quick read), the clips
   within a shard are drawn at random. Deterministic from ``--seed``.
2. Encode them in batches with the frozen encoder (``--encoder``: ``s3d`` as in the paper, which
   needs ``--encoder-weights``, or the built-in ``synthetic``) on ``--device``, with a progress bar,
   into ``features.npy`` in the output folder (float32, written as it goes; removed at the end
   unless ``--keep-features``).
3. Fit the ``--depth`` x ``--branching`` tree (``models.visual.kmeans``; features streamed from
   that file), save ``codebook.safetensors`` (``models.visual.codebook``), write ``summary.json``
   and print it: clips used, feature dimension, inertia per level, leaves used, time.
4. Draw ``leaves.png``: for the most used visual words, the middle frames of sampled clips that
   fall in them (a look at what the codebook tells apart).

Clip shards whose fps, clip length or frame size differ from what the encoder expects are refused,
naming both. Unreadable samples and truncated shards are listed in ``errors.jsonl`` and the fit goes
on with the clips that could be read. An existing codebook is not replaced without ``--overwrite``
(token shards made with it would no longer match). Exit status: 0 when a codebook was written, 1
when no clip could be encoded, 2 when the arguments are wrong.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from models.visual.codebook import CODEBOOK_FILE, Codebook
from models.visual.encoder import ClipEncoder, build_encoder
from models.visual.kmeans import KMeansConfig, fit_hierarchical_kmeans
from models.vocab import VISUAL_TOKEN_FORMAT
from shards import reader, schema
from shards.options import Flag, add_config_arguments, config_from_args
from shards.writer import ErrorLog, write_json_atomic

STAGE = "fit-codebook"
FEATURES_FILE = "features.npy"
PICTURE_FILE = "leaves.png"
THUMB = 48
"""Pixels of the longer side of each frame in the picture."""


class FitError(ValueError):
    """The stage cannot run as asked (bad arguments, clips prepared for another encoder)."""


# ---------------------------------------------------------------------------------------------------
# Shared with the tokenize stage


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encoder_options(weights: str | None) -> dict[str, Any]:
    """Options for ``build_encoder`` from the command line (only S3D takes weights)."""
    return {"weights": weights} if weights else {}


def spec_mismatch(encoder_spec, meta: schema.SampleMeta | dict[str, Any], where: str) -> str | None:
    """Why clips (a sample's metadata or a shard's stats) do not suit the encoder, or None."""
    get = meta.get if isinstance(meta, dict) else lambda name: getattr(meta, name)
    if get("fps") is None or get("clip_len") is None or get("frame_size") is None:
        return None
    wrong = encoder_spec.mismatches(
        fps=float(get("fps")), clip_len=int(get("clip_len")), frame_size=tuple(get("frame_size"))
    )
    if not wrong:
        return None
    return (
        f"{where}: clips have " + ", ".join(wrong) + f"; encoder {encoder_spec.name!r} expects "
        f"{encoder_spec.fps:g} fps, {encoder_spec.clip_len}-frame clips of {tuple(encoder_spec.frame_size)} "
        "pixels (prepare the clips with those settings, or choose the encoder that matches them)"
    )


# ---------------------------------------------------------------------------------------------------
# Which clips: a plan spread over the shards


@dataclass
class ShardPlan:
    url: str
    clips: int
    """Clips the shard holds."""
    chosen: np.ndarray
    """Sorted indices (within the shard, counting clips in sample order) of the clips to encode."""


def count_clips(url: str, errors: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """(clips, stats) of a shard: from its stats file, else by reading it without decoding arrays."""
    stats = reader.read_stats(url)
    if stats is not None:
        return int(stats["clips"]), stats
    total = 0
    for sample in reader.iter_samples([url], decode_arrays=False, on_error=_collect(errors)):
        total += sample.meta.n_clips
    return total, None


def plan_sample(
    urls: list[str], num_clips: int, seed: int, encoder_spec, errors: list[dict[str, Any]]
) -> list[ShardPlan]:
    """``num_clips`` clips spread over the shards in proportion to their size (all when fewer)."""
    counts = []
    for url in urls:
        clips, stats = count_clips(url, errors)
        problem = spec_mismatch(encoder_spec, stats, url) if stats else None
        if problem:
            raise FitError(problem)
        counts.append(clips)
    quotas = _proportional(np.array(counts, dtype=np.int64), num_clips)
    plans = []
    for index, (url, clips, quota) in enumerate(zip(urls, counts, quotas)):
        rng = np.random.default_rng([seed, index])
        chosen = np.sort(rng.choice(clips, size=int(quota), replace=False)) if quota < clips else np.arange(clips)
        plans.append(ShardPlan(url, clips, chosen))
    return plans


def _proportional(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer quotas proportional to ``counts`` summing to ``min(total, counts.sum())`` (largest remainder)."""
    available = int(counts.sum())
    if total >= available:
        return counts.copy()
    exact = counts * (total / available)
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: total - int(quotas.sum())]] += 1
    return np.minimum(quotas, counts)


def _collect(errors: list[dict[str, Any]]):
    def on_error(url: str, exc: Exception) -> None:
        errors.append({"stage": STAGE, "input": url, "reason": str(exc)})

    return on_error


# ---------------------------------------------------------------------------------------------------
# Encoding the chosen clips into a feature file


def iter_chosen_clips(plans: list[ShardPlan], encoder_spec, errors: list[dict[str, Any]]) -> Iterator[np.ndarray]:
    """The chosen clips (clip_len, H, W, 3), in plan order, one at a time."""
    for plan in plans:
        if len(plan.chosen) == 0:
            continue
        offset = 0
        for sample in reader.iter_samples([plan.url], on_error=_collect(errors)):
            if sample.meta.kind != schema.CLIP_KIND:
                raise FitError(f"{plan.url}: holds {sample.meta.kind} samples; fit-codebook needs clip shards")
            problem = spec_mismatch(encoder_spec, sample.meta, f"{plan.url}:{sample.key}")
            if problem:
                raise FitError(problem)
            lo, hi = np.searchsorted(plan.chosen, [offset, offset + sample.meta.n_clips])
            for index in plan.chosen[lo:hi]:
                yield sample.frames[index - offset]
            offset += sample.meta.n_clips


def encode_to_file(
    clips: Iterator[np.ndarray], planned: int, encoder: ClipEncoder, path: Path, batch_size: int,
    device: torch.device, progress: bool,
) -> int:
    """Encode clips into an (planned, D) float32 .npy; returns how many rows were filled."""
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(planned, encoder.spec.feature_dim))
    filled = 0
    bar = tqdm(total=planned, unit="clip", desc="encoding", disable=not progress)
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal filled
        out = encoder(torch.from_numpy(np.stack(batch)).to(device)).cpu().numpy()
        features[filled: filled + len(out)] = out
        filled += len(out)
        bar.update(len(out))
        batch.clear()

    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    features.flush()
    del features
    return filled


# ---------------------------------------------------------------------------------------------------
# A picture of the codebook: what the most used visual words look like


def with_thumbnails(clips: Iterator[np.ndarray], thumbs: list[np.ndarray], limit: int = 512) -> Iterator[np.ndarray]:
    """Pass clips through, keeping a small copy of the middle frame of the first ``limit``."""
    for clip in clips:
        if len(thumbs) < limit:
            frame = Image.fromarray(clip[len(clip) // 2])
            frame.thumbnail((THUMB, THUMB))
            thumbs.append(np.asarray(frame))
        yield clip


def save_leaf_picture(path: Path, codebook: Codebook, features: np.ndarray, thumbs: list[np.ndarray],
                      rows: int = 8, per_row: int = 10) -> None:
    """One row per most used leaf (its visual-word name and clip count): middle frames of its clips."""
    ids = codebook.assign(torch.from_numpy(np.array(features[: len(thumbs)]))).numpy()
    leaves = collections.Counter(ids.tolist()).most_common(rows)
    label, cell = 110, THUMB + 4
    canvas = Image.new("RGB", (label + per_row * cell, max(1, len(leaves)) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (leaf, count) in enumerate(leaves):
        draw.text((4, row * cell + cell // 2 - 6), f"{VISUAL_TOKEN_FORMAT.format(leaf)} x{count}", fill="black")
        for column, index in enumerate(np.flatnonzero(ids == leaf)[:per_row]):
            canvas.paste(Image.fromarray(thumbs[index]), (label + column * cell, row * cell + 2))
    canvas.save(path)


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True, kw_only=True)
class FitCodebookConfig:
    """Everything the stage needs; validated on construction."""

    clips: tuple[str, ...]
    """Clip shards: folders, tar files, globs or brace patterns."""
    out: str
    """Output folder for codebook.safetensors, summary.json, errors.jsonl."""
    encoder: str = "s3d"
    """Clip encoder: s3d (the paper's) or synthetic (the built-in one, for the synthetic corpus)."""
    encoder_weights: str | None = None
    """Weights file of the encoder (S3D: the Kinetics-400 checkpoint)."""
    num_clips: int = 100_000
    """Clips to sample and encode."""
    depth: int = 4
    """Levels of the k-means tree."""
    branching: int = 12
    """Children per node (depth 4 x branching 12: the paper's 20,736 visual words)."""
    seed: int = 0
    """Seed of the clip sample and of k-means."""
    batch_size: int = 32
    """Clips per encoder batch."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    keep_features: bool = False
    """Keep the encoded sample of features in the output folder (a re-fit can start from it)."""
    overwrite: bool = False
    """Replace an existing codebook in the output folder."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        problems = [message for ok, message in [
            (bool(self.clips), "no --clips given"),
            (self.num_clips >= 1, "--num-clips must be at least 1"),
            (self.depth >= 1, "--depth must be at least 1"),
            (self.branching >= 2, "--branching must be at least 2"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
        ] if not ok]
        if problems:
            raise FitError("; ".join(problems))


@dataclass
class FitSummary:
    """``summary.json`` of the stage."""

    codebook: str
    codebook_hash: str
    encoder: dict[str, Any]
    shards: int
    clips_available: int
    clips_planned: int
    clips_used: int
    feature_dim: int
    depth: int
    branching: int
    num_leaves: int
    leaves_used: int
    seed: int
    inertia: list[float]
    iterations: list[int]
    errors_lines: int
    encode_seconds: float
    fit_seconds: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}


def fit_codebook(config: FitCodebookConfig) -> FitSummary:
    """Run the stage (library entry point; ``run`` is the command line's).

    Raises ``FitError`` for wrong arguments or mismatched clips, ``NoClipsError`` when nothing could
    be encoded.
    """
    started = time.perf_counter()
    out = Path(config.out)
    codebook_path = out / CODEBOOK_FILE
    if codebook_path.exists() and not config.overwrite:
        raise FitError(
            f"{codebook_path} exists; token shards made with it would no longer match. Add --overwrite to replace it"
        )
    urls = _resolve(config.clips)
    device = resolve_device(config.device)
    encoder = _build_encoder(config).to(device)
    out.mkdir(parents=True, exist_ok=True)
    errors: list[dict[str, Any]] = []
    plans = plan_sample(urls, config.num_clips, config.seed, encoder.spec, errors)
    planned = sum(len(p.chosen) for p in plans)
    features_path = out / FEATURES_FILE
    thumbs: list[np.ndarray] = []
    try:
        clips = with_thumbnails(iter_chosen_clips(plans, encoder.spec, errors), thumbs)
        used = 0
        if planned:
            used = encode_to_file(clips, planned, encoder, features_path, config.batch_size, device, config.progress)
        encode_seconds = time.perf_counter() - started
        ErrorLog(out / schema.ERRORS_FILE, errors).close()
        if used == 0:
            raise NoClipsError(f"no clip could be read from {len(urls)} shards (see {out / schema.ERRORS_FILE})")
        codebook, fit, leaves_used = _fit(config, encoder, features_path, used, device)
        save_leaf_picture(out / PICTURE_FILE, codebook, np.load(features_path, mmap_mode="r"), thumbs)
    finally:
        if not config.keep_features:
            features_path.unlink(missing_ok=True)
    codebook.save(codebook_path)
    summary = FitSummary(
        codebook=str(codebook_path), codebook_hash=codebook.hash, encoder=encoder.spec.to_dict(),
        shards=len(urls), clips_available=sum(p.clips for p in plans), clips_planned=planned, clips_used=used,
        feature_dim=encoder.spec.feature_dim, depth=codebook.depth, branching=codebook.branching,
        num_leaves=codebook.num_leaves, leaves_used=leaves_used, seed=config.seed, inertia=fit.inertia,
        iterations=fit.iterations, errors_lines=len(errors), encode_seconds=encode_seconds,
        fit_seconds=fit.seconds, seconds=time.perf_counter() - started,
    )
    write_json_atomic(out / schema.SUMMARY_FILE, summary.to_json())
    return summary


class NoClipsError(RuntimeError):
    """Nothing could be encoded: every sampled shard was unreadable."""


def _resolve(specs: tuple[str, ...]) -> list[str]:
    try:
        return reader.resolve_shards(list(specs))
    except reader.ShardSpecError as e:
        raise FitError(str(e)) from None


def _build_encoder(config: FitCodebookConfig) -> ClipEncoder:
    try:
        return build_encoder(config.encoder, **encoder_options(config.encoder_weights))
    except (ValueError, TypeError) as e:  # unknown name or option, missing or wrong weights: the user's to fix
        raise FitError(str(e)) from None


def _fit(config: FitCodebookConfig, encoder: ClipEncoder, features_path: Path, used: int, device: torch.device):
    """(codebook, k-means result, leaves used) from the first ``used`` rows of the feature file."""
    features = np.load(features_path, mmap_mode="r")[:used]  # streamed, never loaded whole
    kmeans = KMeansConfig(depth=config.depth, branching=config.branching, seed=config.seed, device=str(device))
    fit = fit_hierarchical_kmeans(features, kmeans, progress=config.progress)
    codebook = Codebook.from_fit(fit, encoder.spec)
    return codebook, fit, _leaves_used(codebook, features, device)


def _leaves_used(codebook: Codebook, features: np.ndarray, device: torch.device, chunk: int = 65536) -> int:
    used = torch.zeros(codebook.num_leaves, dtype=torch.bool)
    for lo in range(0, len(features), chunk):
        block = torch.from_numpy(np.array(features[lo: lo + chunk])).to(device)
        used[codebook.assign(block).cpu()] = True
    return int(used.sum())


# ---------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FitCodebookConfig, {
        "clips": Flag(metavar="SPEC"), "out": Flag(metavar="FOLDER"), "encoder_weights": Flag(metavar="PATH"),
    })


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(FitCodebookConfig, args)
        summary = fit_codebook(config)
    except FitError as e:
        print(f"videobert shards fit-codebook: error: {e}", file=sys.stderr)
        return 2
    except NoClipsError as e:
        print(f"videobert shards fit-codebook: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def format_summary(s: FitSummary) -> str:
    """The printed summary."""
    inertia = ", ".join(f"{x:.4g}" for x in s.inertia)
    lines = [
        f"codebook {s.codebook} (hash {s.codebook_hash}): {s.depth} x {s.branching} = {s.num_leaves} leaves, "
        f"{s.leaves_used} used by the sample",
        f"  encoder   {s.encoder['name']} ({s.encoder['fps']:g} fps, {s.encoder['clip_len']} frames, "
        f"{tuple(s.encoder['frame_size'])} pixels) -> {s.feature_dim}-d features",
        f"  clips     {s.clips_used} encoded of {s.clips_planned} sampled from {s.clips_available} "
        f"in {s.shards} shards",
        f"  inertia   per level {inertia}; iterations {s.iterations}",
        f"  time      encode {s.encode_seconds:.1f} s, fit {s.fit_seconds:.1f} s, total {s.seconds:.1f} s",
        f"  picture   {Path(s.codebook).parent / PICTURE_FILE}: example frames of the most used visual words",
    ]
    if s.errors_lines:
        lines.append(f"  {s.errors_lines} problems listed in {Path(s.codebook).parent / schema.ERRORS_FILE}")
    return "\n".join(lines)

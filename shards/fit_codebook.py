"""``videobert shards fit-codebook``: clip shards -> frozen clip encoder -> hierarchical k-means -> codebook.

    videobert shards fit-codebook --clips CLIPS/ --out CODEBOOK/ [--encoder s3d --encoder-weights s3d.pth]
        [--num-clips 100000] [--depth 4] [--branching 12] [--seed 0] [--batch-size 32] [--device auto]
        [--part I/N]

1. Sample ``--num-clips`` clips spread over the clip shards: each shard contributes in proportion to
   its clips (read from its stats file; shards without one are counted by a quick read), the clips
   within a shard are drawn at random. Deterministic from ``--seed``.
2. Encode them with the frozen encoder (``--encoder``: ``s3d`` as in the paper, which needs
   ``--encoder-weights``, or the built-in ``synthetic``) on ``--device``, with a progress bar, shard
   by shard into feature files in ``CODEBOOK/features/`` (``shards.fit_features``). This pass can be
   split over machines: ``--part I/N`` (or a launcher's variables) encodes part I of the shards and
   stops; ``videobert shards status CODEBOOK/features`` shows the parts.
3. Fit the ``--depth`` x ``--branching`` tree (``models.visual.kmeans``) on one machine over all the
   features, merged in shard order into ``features.npy`` (streamed from that file): run without
   ``--part`` once every part is done (any feature file still missing in a run of one part is encoded
   first). A codebook fitted from parts has the hash of one fitted in one run. Save
   ``codebook.safetensors`` (``models.visual.codebook``), write ``summary.json`` and print it: clips
   used, feature dimension, inertia per level, leaves used, time.
4. Draw ``leaves.png``: for the most used visual words, the middle frames of sampled clips that
   fall in them (a look at what the codebook tells apart). Drawn after the codebook is saved: a
   picture that cannot be drawn is reported, and the codebook stays.

The feature files are removed once the codebook is saved, unless ``--keep-features`` (then
``features.npy`` is kept too); a run that fails keeps them, and a re-run reuses every feature file
already committed. Clip shards whose fps, clip length or frame size differ from what the encoder
expects are refused, naming both. Unreadable samples and truncated shards are listed in
``errors.jsonl`` and the fit goes on with the clips that could be read. An existing codebook is not
replaced without ``--overwrite`` (token shards made with it would no longer match); features
extracted with other arguments are not replaced without it either. Exit status: 0 when a codebook
(or a part's features) was written, 1 when no clip could be encoded, 2 when the arguments are wrong.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from videobert.models.errors import VideoBertError
from videobert.models.visual.codebook import CODEBOOK_FILE, Codebook
from videobert.models.visual.encoder import ClipEncoder, build_encoder
from videobert.models.visual.kmeans import KMeansConfig, fit_hierarchical_kmeans
from videobert.models.vocab import VISUAL_TOKEN_FORMAT
from videobert.shards import reader, schema, storage
from videobert.shards.fit_features import (
    FEATURES_FOLDER, STAGE, FeatureRun, FeaturesSummary, FitError, ShardPlan, collected, encoder_options, extract,
    iter_chosen_clips, merge, plan_sample, process_device, ready_features,
)
from videobert.shards.folders import ErrorLog, write_json_atomic
from videobert.shards.options import Flag, add_config_arguments, config_from_args
from videobert.shards.parts import Part, PartOption

FEATURES_FILE = "features.npy"
"""The merged sample of features the tree is fitted on (kept with ``--keep-features``)."""
PICTURE_FILE = "leaves.png"
THUMB = 48
"""Pixels of the longer side of each frame in the picture."""
PICTURE_CLIPS = 512
"""Clips (the first of the sample) whose middle frames the picture may show."""


# ---------------------------------------------------------------------------------------------------
# A picture of the codebook: what the most used visual words look like


def thumbnails(plans: list[ShardPlan], encoder_spec, limit: int = PICTURE_CLIPS) -> list[np.ndarray]:
    """Small copies of the middle frames of the sample's first ``limit`` clips (the features' first rows)."""
    thumbs: list[np.ndarray] = []
    for clip in iter_chosen_clips(plans, encoder_spec, []):
        if len(thumbs) == limit:
            break
        frame = Image.fromarray(clip[len(clip) // 2])
        frame.thumbnail((THUMB, THUMB))
        thumbs.append(np.asarray(frame))
    return thumbs


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
class FitCodebookConfig(PartOption):
    """Everything the stage needs; validated on construction."""

    clips: tuple[str, ...]
    """Clip shards: folders, tar files, globs or brace patterns."""
    out: str
    """Output folder for codebook.safetensors, summary.json, errors.jsonl (and features/ while it works)."""
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
    """Keep the encoded features in the output folder after the fit (a re-fit starts from them)."""
    overwrite: bool = False
    """Replace an existing codebook in the output folder (and features extracted with other arguments)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        problems = [message for ok, message in [
            (bool(self.clips), "no --clips given"),
            (self.num_clips >= 1, "--num-clips must be at least 1"),
            (self.depth >= 1, "--depth must be at least 1"),
            (self.branching >= 2, "--branching must be at least 2"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
        ] if not ok] + self.part_problems()
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
    """Seconds spent encoding, summed over the shards (and the parts that encoded them)."""
    fit_seconds: float
    seconds: float
    picture: str = ""
    """The picture's file, or why it could not be drawn."""

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}


class NoClipsError(VideoBertError, RuntimeError):
    """Nothing could be encoded: every sampled shard was unreadable."""

    exit_status = 1


def feature_run(config: FitCodebookConfig, part: Part | None = None) -> FeatureRun:
    """The encoder and the plan of clips every part computes alike."""
    urls = _resolve(config.clips)
    device = process_device(config.device, part or Part())
    encoder = _build_encoder(config).to(device)
    errors: list[dict[str, Any]] = []
    plans = plan_sample(urls, config.num_clips, config.seed, encoder.spec, errors)
    return FeatureRun(urls=urls, encoder=encoder, num_clips=config.num_clips, seed=config.seed,
                      batch_size=config.batch_size, device=device, weights=config.encoder_weights,
                      progress=config.progress, overwrite=config.overwrite, plans=plans, plan_errors=errors)


def extract_features(config: FitCodebookConfig, part: Part) -> FeaturesSummary:
    """The feature pass of one part (no fit): ``fit-codebook --part I/N``."""
    with storage.working_folder(config.out) as out:  # a bucket's prefix: each shard's features uploaded as committed
        return extract(feature_run(config, part), Path(out) / FEATURES_FOLDER, part)


def fit_codebook(config: FitCodebookConfig) -> FitSummary:
    """Run the stage on one machine: the features not extracted yet, then the fit (library entry point;
    ``run`` is the command line's).

    Raises ``FitError`` for wrong arguments, mismatched clips or unfinished feature parts,
    ``NoClipsError`` when nothing could be encoded.
    """
    with storage.working_folder(config.out) as out:  # a bucket's prefix: worked locally, uploaded as committed
        return _fit_into(config, Path(out), started=time.perf_counter())


def _fit_into(config: FitCodebookConfig, out: Path, started: float) -> FitSummary:
    codebook_path = out / CODEBOOK_FILE
    if codebook_path.exists() and not config.overwrite:
        raise FitError(
            f"{codebook_path} exists; token shards made with it would no longer match. Add --overwrite to replace it"
        )
    run = feature_run(config)
    features_out = out / FEATURES_FOLDER
    ready_features(run, features_out)
    files = collected(features_out, len(run.urls))
    errors = list(run.plan_errors) + [e for _, record in files for e in record["errors"]]
    ErrorLog(out / schema.ERRORS_FILE, errors).close()
    merged = out / FEATURES_FILE
    used = merge(files, merged, run.encoder.spec.feature_dim)
    if used == 0:
        merged.unlink()
        raise NoClipsError(f"no clip could be read from {len(run.urls)} shards (see {out / schema.ERRORS_FILE})")
    codebook, fit, leaves_used = _fit(config, run.encoder, merged, used, run.device)
    codebook.save(codebook_path)  # first: nothing after this may lose the fit
    storage.published(codebook_path)
    summary = _summary(codebook_path, codebook, fit, leaves_used, run, files, len(errors))
    summary.picture = _draw(out / PICTURE_FILE, codebook, merged, used, run)
    summary.seconds = time.perf_counter() - started
    storage.published(out / PICTURE_FILE) if (out / PICTURE_FILE).is_file() else None
    write_json_atomic(out / schema.SUMMARY_FILE, summary.to_json())
    if config.keep_features:
        storage.published(merged)
    else:
        merged.unlink()
        storage.remove_published(features_out)  # in a bucket, the parts' feature files too
    return summary


def _summary(path: Path, codebook: Codebook, fit, leaves_used: int, run: FeatureRun,
             files: list[tuple[Path, dict[str, Any]]], errors_lines: int) -> FitSummary:
    return FitSummary(
        codebook=str(path), codebook_hash=codebook.hash, encoder=run.encoder.spec.to_dict(),
        shards=len(run.urls), clips_available=sum(p.clips for p in run.plans),
        clips_planned=sum(record["planned"] for _, record in files),
        clips_used=sum(record["rows"] for _, record in files), feature_dim=run.encoder.spec.feature_dim,
        depth=codebook.depth, branching=codebook.branching, num_leaves=codebook.num_leaves, leaves_used=leaves_used,
        seed=run.seed, inertia=fit.inertia, iterations=fit.iterations, errors_lines=errors_lines,
        encode_seconds=sum(record["seconds"] for _, record in files), fit_seconds=fit.seconds, seconds=0.0,
    )


def _draw(path: Path, codebook: Codebook, merged: Path, used: int, run: FeatureRun) -> str:
    """Draw the picture; what went wrong, if it could not be (the codebook is saved already)."""
    try:
        thumbs = thumbnails(run.plans, run.encoder.spec, min(used, PICTURE_CLIPS))
        save_leaf_picture(path, codebook, np.load(merged, mmap_mode="r"), thumbs)
    except Exception as e:  # noqa: BLE001 - a picture is a look at the codebook, never a reason to lose it
        traceback.print_exc()
        return f"not drawn: {type(e).__name__}: {e}"
    return str(path)


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
    config = config_from_args(FitCodebookConfig, args)
    part = config.resolve_part()
    if not part.whole:
        print(f"videobert shards fit-codebook: the feature pass, part {part} (from {part.source})", file=sys.stderr)
        features = extract_features(config, part)
        print(format_features(features, part, Path(config.out) / FEATURES_FOLDER))
        return 0 if features.clips_used or not features.clips_planned else 1
    summary = fit_codebook(config)
    print(format_summary(summary))
    return 0


def format_features(s: FeaturesSummary, part: Part, out: Path) -> str:
    return "\n".join([
        f"features of part {part}: {s.clips_used} clips encoded of {s.clips_planned} planned in {s.shards} shards "
        f"({s.shards_kept} kept from an earlier run), {s.clips_per_second:.1f} clips/s",
        f"  when every part is done (videobert shards status {out}), fit without --part",
    ])


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
        f"  picture   {s.picture}: example frames of the most used visual words",
    ]
    if s.errors_lines:
        lines.append(f"  {s.errors_lines} problems listed in {Path(s.codebook).parent / schema.ERRORS_FILE}")
    return "\n".join(lines)

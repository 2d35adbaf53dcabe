"""The feature pass of ``fit-codebook``: which clips, encoded shard by shard into feature files, in parts.

The sample of clips (``plan_sample``) is spread over the clip shards in proportion to their clips and
drawn per shard from ``--seed``: every process computes the same plan. Each input shard ``i`` with
chosen clips gets its own feature file, ``features-00000i.npy`` (float32, one row per chosen clip that
could be read, in sample order) committed by ``features-00000i.json`` (its rows, the clips it
planned, seconds, and the problems met). The files live in the codebook folder's ``features/``
folder, laid out like any stage's output (``shards.parts``): at its top for a run of one part, in
``part-NNNNN/`` for part ``i mod N`` of a run split in N. Each shard is encoded from its own first
clip in batches of its own, so the features of a shard, and the codebook fitted from them, do not
depend on how the work was split. A re-run (or the fit) finds the feature files already committed
and encodes only the rest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from videobert.models.errors import VideoBertError
from videobert.models.visual.encoder import ClipEncoder
from videobert.shards import reader, schema, storage
from videobert.shards.folders import ErrorLog, read_json, write_json_atomic
from videobert.shards.parts import Part, SummaryRules, claim_part, finish_part, split_count, split_status

STAGE = "fit-codebook"
FEATURES_FOLDER = "features"
"""The codebook folder's folder of feature files (a stage folder of its own: ``shards status`` reads it)."""
FEATURE_PREFIX = "features-"


class FitError(VideoBertError, ValueError):
    """The stage cannot run as asked (bad arguments, clips prepared for another encoder)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def process_device(name: str, part: Part) -> torch.device:
    """The device asked for; under a launcher (one process per GPU) ``auto``/``cuda`` is the process's own GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and part.local_rank is not None:
        return torch.device("cuda", part.local_rank % max(1, torch.cuda.device_count()))
    return device


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
    for sample in reader.iter_samples([url], decode_arrays=False, on_error=collect_errors(errors)):
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


def collect_errors(errors: list[dict[str, Any]]):
    def on_error(url: str, exc: Exception) -> None:
        errors.append({"stage": STAGE, "input": url, "reason": str(exc)})

    return on_error


# ---------------------------------------------------------------------------------------------------
# Encoding the chosen clips into feature files


def iter_chosen_clips(plans: list[ShardPlan], encoder_spec, errors: list[dict[str, Any]]) -> Iterator[np.ndarray]:
    """The chosen clips (clip_len, H, W, 3), in plan order, one at a time."""
    for plan in plans:
        if len(plan.chosen) == 0:
            continue
        offset = 0
        for sample in reader.iter_samples([plan.url], on_error=collect_errors(errors)):
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
    device: torch.device, bar: tqdm,
) -> int:
    """Encode clips into an (planned, D) float32 .npy; returns how many rows were filled."""
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(planned, encoder.spec.feature_dim))
    filled = 0
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
    features.flush()
    del features
    return filled


def feature_paths(folder: Path, index: int) -> tuple[Path, Path]:
    """(features, record) of input shard ``index`` in a feature folder."""
    stem = f"{FEATURE_PREFIX}{index:0{schema.SHARD_INDEX_DIGITS}d}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def encode_shard(plan: ShardPlan, index: int, encoder: ClipEncoder, folder: Path, batch_size: int,
                 device: torch.device, bar: tqdm) -> dict[str, Any]:
    """Encode one shard's chosen clips into its feature file; the record that commits it."""
    started = time.perf_counter()
    features, record_path = feature_paths(folder, index)
    errors: list[dict[str, Any]] = []
    rows = 0
    if len(plan.chosen):
        partial = features.with_name(features.name + schema.PARTIAL_SUFFIX)
        clips = iter_chosen_clips([plan], encoder.spec, errors)
        rows = encode_to_file(clips, len(plan.chosen), encoder, partial, batch_size, device, bar)
        partial.replace(features)
        storage.published(features)  # a bucket's feature folder: the rows uploaded before their record
    record = {"shard": index, "url": plan.url, "clips": plan.clips, "planned": len(plan.chosen), "rows": rows,
              "seconds": time.perf_counter() - started, "errors": errors}
    write_json_atomic(record_path, record)
    return record


# ---------------------------------------------------------------------------------------------------
# The feature folder: claimed, filled, and read back for the fit


@dataclass
class FeaturesSummary:
    """``summary.json`` of a feature folder (or of one of its parts)."""

    shards: int
    shards_kept: int
    """Shards whose features an earlier run had committed."""
    clips_planned: int
    clips_used: int
    clips_skipped: int
    """Planned clips that could not be read (see errors.jsonl)."""
    feature_dim: int
    errors_lines: int
    encode_seconds: float
    clips_per_second: float

    def to_json(self) -> dict[str, Any]:
        return {"stage": STAGE, **asdict(self)}


SUMMARY_RULES = SummaryRules(
    accounting=("clips_planned", "clips_used", "clips_skipped"), throughput=("clips_per_second", "clips/s"),
    rates={"clips_per_second": ("clips_used", "encode_seconds")}, same=("feature_dim",),
)
"""How the parts' feature summaries combine (``shards.parts``)."""


@dataclass(frozen=True)
class FeatureRun:
    """What decides the features (a re-run, or a part, must match it)."""

    urls: list[str]
    encoder: ClipEncoder
    num_clips: int
    seed: int
    batch_size: int
    device: torch.device
    weights: str | None = None
    progress: bool = True
    overwrite: bool = False
    plans: list[ShardPlan] = field(default_factory=list)
    plan_errors: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"stage": STAGE, "format_version": schema.FORMAT_VERSION, "arguments": {
            "clips": self.urls, "encoder": self.encoder.spec.to_dict(),
            "encoder_weights": str(Path(self.weights).absolute()) if self.weights else None,
            "num_clips": self.num_clips, "seed": self.seed, "batch_size": self.batch_size}}


def _differences(previous: dict[str, Any], record: dict[str, Any]) -> list[str]:
    old, new = previous.get("arguments", {}), record["arguments"]
    return [f"--{name.replace('_', '-')} was {_short(old.get(name))}, now {_short(new.get(name))}"
            for name in new if old.get(name) != new.get(name)]


def _short(value: Any) -> str:
    return f"{len(value)} shards" if isinstance(value, list) else repr(value)


def extract(run: FeatureRun, out: Path, part: Part) -> FeaturesSummary:
    """The feature pass of one part into ``out`` (the feature folder); resumes shard by shard."""
    folder = _claim(run, out, part)
    mine = [i for i in range(len(run.plans)) if part.owns_shard(i)]
    kept = {i for i in mine if feature_paths(folder, i)[1].exists()}
    todo = [i for i in mine if i not in kept]
    bar = tqdm(total=sum(len(run.plans[i].chosen) for i in todo), unit="clip", desc="encoding",
               disable=not run.progress)
    try:
        for index in todo:
            encode_shard(run.plans[index], index, run.encoder, folder, run.batch_size, run.device, bar)
    finally:
        bar.close()
    summary = _summarize(folder, mine, len(kept), run)
    finish_part(out, part, SUMMARY_RULES)
    return summary


def _claim(run: FeatureRun, out: Path, part: Part) -> Path:
    """The part's feature folder; features of other arguments are replaced only with --overwrite."""
    options = dict(stage=STAGE, argument_differences=_differences, error=FitError,
                   extra_patterns=(f"{FEATURE_PREFIX}*",))
    try:
        return claim_part(out, run.record(), part, overwrite=False, **options)[0]
    except FitError:
        if not run.overwrite:
            raise
        return claim_part(out, run.record(), part, overwrite=True, **options)[0]


def _summarize(folder: Path, mine: list[int], kept: int, run: FeatureRun) -> FeaturesSummary:
    records = [read_json(feature_paths(folder, i)[1]) for i in mine]
    urls = {run.urls[i] for i in mine}
    errors = [e for e in run.plan_errors if e["input"] in urls] + [e for r in records for e in r["errors"]]
    ErrorLog(folder / schema.ERRORS_FILE, errors).close()
    planned, used = sum(r["planned"] for r in records), sum(r["rows"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    summary = FeaturesSummary(
        shards=len(mine), shards_kept=kept, clips_planned=planned, clips_used=used, clips_skipped=planned - used,
        feature_dim=run.encoder.spec.feature_dim, errors_lines=len(errors), encode_seconds=seconds,
        clips_per_second=used / seconds if seconds else 0.0,
    )
    write_json_atomic(folder / schema.SUMMARY_FILE, summary.to_json())
    return summary


def ready_features(run: FeatureRun, out: Path) -> None:
    """Make sure every shard's features are in ``out``: from a finished split run, else by encoding
    here whatever a run of one part has not committed yet (raises ``FitError`` when parts are missing)."""
    count = split_count(out)
    if count is None:
        extract(run, out, Part())
        return
    status = split_status(out)
    shared = read_json(out / schema.RUN_FILE)
    differences = _differences(shared, run.record())
    if differences:
        raise FitError(f"the features in {out} were extracted with other arguments ({'; '.join(differences)}); fit "
                       "with the arguments the parts ran with, or run the parts again with these and --overwrite")
    if not status.complete:
        todo = sorted(p.index for p in status.parts if p.summary is None or p.other_arguments)
        raise FitError(f"the feature pass in {out} is split into {count} parts and parts {todo} are not finished "
                       f"(videobert shards status {out}); run them with the same arguments, then fit")


def collected(out: Path, count: int) -> list[tuple[Path, dict[str, Any]]]:
    """(feature file, record) of every input shard, in shard order, wherever its part wrote it."""
    parts = split_count(out)
    found = []
    for index in range(count):
        folder = schema.part_folder(out, index % parts) if parts else out
        features, record = feature_paths(folder, index)
        found.append((features, read_json(record)))
    return found


def merge(files: list[tuple[Path, dict[str, Any]]], path: Path, feature_dim: int) -> int:
    """Concatenate the shards' feature rows into one (rows, D) float32 .npy; returns the rows."""
    rows = sum(record["rows"] for _, record in files)
    merged = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(max(rows, 1), feature_dim))
    at = 0
    for features, record in files:
        if record["rows"]:
            fetched = not features.is_file()  # another part's, in a bucket: fetched here
            shard_rows = np.load(storage.published_file(features), mmap_mode="r")[: record["rows"]]
            merged[at: at + record["rows"]] = shard_rows
            at += record["rows"]
            del shard_rows
            if fetched:  # one such file here at a time
                features.unlink()
    merged.flush()
    del merged
    return rows

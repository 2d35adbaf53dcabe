"""The ``build_*`` steps of a run: each makes one part from the config, in the order the trainer needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.vocab import JointVocab
from shards import reader, schema
from trainer.config import ConfigError, TrainConfig
from trainer.data import StreamSpec
from trainer.engine import DistInfo, resolve_bert_dir, zero_init_context

log = logging.getLogger(__name__)


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


def check_source(source: DataSource, codebook: Any, what: str) -> None:
    """Token shards must come from this codebook; clip shards must match its encoder's input."""
    if source.kind == schema.TOKEN_KIND:
        if source.meta.codebook_hash != codebook.hash:
            raise ConfigError(
                f"{what}: the token shards were made with codebook {source.meta.codebook_hash}, but "
                f"data.codebook is {codebook.hash}; point data.codebook at the codebook they were "
                "tokenized with, or re-run `videobert shards tokenize` with this one"
            )
        return
    codebook.check_clips(fps=source.meta.fps, clip_len=source.meta.clip_len, frame_size=source.meta.frame_size)


def build_tokenizer(cfg: TrainConfig):
    from models.hf_interop import load_text_tokenizer

    return load_text_tokenizer(resolve_bert_dir(cfg.data.text_model or cfg.model.init))


def build_codebook(cfg: TrainConfig):
    from models.visual.codebook import Codebook

    path = Path(cfg.data.codebook)
    if not path.is_file():
        raise ConfigError(f"data.codebook {path} does not exist: run `videobert shards fit-codebook` first")
    return Codebook.load(path)


def model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    o = cfg.objectives
    out: dict[str, Any] = dict(
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        text_mlm_weight=o.text_mlm_weight, video_mlm_weight=o.video_mlm_weight, alignment_weight=o.alignment_weight,
    )
    if cfg.model.hidden_dropout is not None:
        out["hidden_dropout_prob"] = cfg.model.hidden_dropout
    if cfg.model.attention_dropout is not None:
        out["attention_probs_dropout_prob"] = cfg.model.attention_dropout
    return out


def build_model_config(cfg: TrainConfig, vocab: JointVocab):
    from models.config import config_from_bert_dir, preset

    if cfg.model.init:
        return config_from_bert_dir(resolve_bert_dir(cfg.model.init), vocab, **model_overrides(cfg))
    return preset(cfg.model.preset, vocab, **model_overrides(cfg))


def build_model(cfg: TrainConfig, vocab: JointVocab, ds_config: dict[str, Any]) -> torch.nn.Module:
    """The single-device model: from a BERT directory (full weights, then partitioned by the engine)
    or from a preset, built already partitioned under ``deepspeed.zero.Init``."""
    from models.hf_interop import from_pretrained_bert
    from models.videobert import VideoBertForPreTraining

    if cfg.model.init:
        return from_pretrained_bert(resolve_bert_dir(cfg.model.init), vocab, **model_overrides(cfg))
    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    with zero_init_context(ds_config, enabled=zero3):
        return VideoBertForPreTraining(build_model_config(cfg, vocab))


def build_visual_tokenizer(cfg: TrainConfig, device: torch.device):
    """Clip shards only: the frozen encoder + codebook that turn clips into visual tokens in the step."""
    from models.visual.tokenizer import VisualTokenizer

    options = {"weights": cfg.data.encoder_weights} if cfg.data.encoder_weights else {}
    return VisualTokenizer.from_codebook(cfg.data.codebook, **options).to(device).eval()


def stream_spec(cfg: TrainConfig, urls: tuple[str, ...], dist_info: DistInfo, *, train: bool = True) -> StreamSpec:
    o = cfg.objectives
    return StreamSpec(
        urls=urls, seed=cfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
        num_streams=max(1, cfg.data.num_workers) if train else 1, shuffle_buffer=cfg.data.shuffle_buffer,
        concat_prob=o.concat_prob if train else 0.0, concat_max=o.concat_max if train else 1, shuffle=train,
    )


def warn_if_few_shards(urls: tuple[str, ...], spec: StreamSpec, is_main: bool) -> None:
    if len(urls) < spec.total_streams and is_main:
        log.warning(
            "%d training shard(s) for %d streams (%d ranks x %d workers): every stream reads every shard "
            "and keeps every %d-th item; write at least as many shards as streams to read each byte once",
            len(urls), spec.total_streams, spec.world_size, spec.num_streams, spec.total_streams,
        )

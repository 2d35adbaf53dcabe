"""The run's configuration: one typed dataclass per component, loaded strictly, validated at once.

A recipe is a YAML or JSON file whose top-level sections match ``TrainConfig``'s fields. A recipe may
name another with ``base: other.yaml`` (a path relative to it): the base is loaded first and the
recipe's values override it, section by section. Command-line overrides ``section.field=value``
(values parsed as YAML scalars) are applied last. Unknown keys are errors; every problem found is
reported in one message, each naming the fix. The resolved config is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from videobert.models.errors import VideoBertError
from videobert.models.config import ALIGNMENT_LOSSES

KERNEL_CHOICES = ("auto", "triton", "reference")
"""Values of ``model.kernels`` (``models.kernels.resolve_kernel_set`` turns ``auto`` into a set)."""


class ConfigError(VideoBertError, ValueError):
    """One or more problems with a configuration; the message lists each with its fix."""


def shipped_file(relative: str) -> Path:
    """A file installed with the package (the repository's own copy in an editable install)."""
    return Path(str(importlib.resources.files("videobert").joinpath(relative)))


RECIPES_DIR = "launch/recipes"
"""Where the shipped recipes live, inside the package as in the repository."""

DEFAULT_DEEPSPEED_CONFIG = "ds_config.json"
"""The shipped DeepSpeed config, used when ``deepspeed_config`` is empty."""


def shipped_recipes() -> list[str]:
    """Names of the recipes installed with the package (``--config NAME`` takes each)."""
    return sorted(p.stem for p in shipped_file(RECIPES_DIR).glob("*.yaml"))


def resolve_recipe(given: str | Path) -> Path:
    """A recipe path as given, or the shipped recipe of that name (``demo`` -> ``launch/recipes/demo.yaml``)."""
    path = Path(given)
    if path.is_file() or path.suffix or len(path.parts) != 1:
        return path
    shipped = shipped_file(RECIPES_DIR) / f"{path.name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"recipe {given} is neither a file nor a shipped recipe ({', '.join(shipped_recipes())})")


@dataclass(kw_only=True)
class TrainSource:
    """One corpus of a weighted mix (an entry of ``data.train`` written as a mapping; ``trainer.mixing``)."""

    path: list[str] = field(default_factory=list)
    """Its shards: a folder, glob, brace pattern or ``pipe:`` URL, or a list of them."""
    weight: float = 1.0
    """Its share of the micro-batches, relative to the other sources' weights."""
    name: str = ""
    """Its name in the audit, the metrics and the data position (default: its first path's last part)."""


@dataclass(kw_only=True)
class DataConfig:
    train: list[str | TrainSource] = field(default_factory=list)
    """Training shards: folders, globs, brace patterns or ``pipe:`` URLs (token or clip shards), read as
    one source; or corpora mixed by weight, each entry ``{path: SHARDS, weight: W, name: N}``."""
    heldout: list[str | TrainSource] = field(default_factory=list)
    """Held-out shards for the held-out passes (optional): plain specs, read as one set; or named
    sources ``{path: SHARDS, name: N}``, each also evaluated on its own (``heldout/N/*``; no weight:
    a held-out figure is not a mix)."""
    codebook: str = ""
    """The codebook file (``shards fit-codebook``): fixes the number of visual words and, for clip
    shards, tokenizes clips inside the step. Token shards must carry its hash."""
    text_model: str = ""
    """Directory of the BERT whose WordPiece tokenizer reads the text (``minilm`` = the packaged
    one); empty = the directory of ``model.init``."""
    max_seq_len: int = 128
    """Longest sequence in tokens, specials included (see ``models.vocab.fit_lengths`` for the cut)."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = read in the training process)."""
    shuffle_buffer: int = 512
    """Items held by the sample shuffle buffer of each stream."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead."""
    encoder_weights: str = ""
    """Clip shards only: weights file of the codebook's clip encoder, when it needs one (S3D)."""
    audit: bool = False
    """Write what each optimizer step consumed to ``run_dir/audit/rank-NNNNN.jsonl`` (one line per
    step and epoch: the step, the epoch, the keys of the samples its examples were built from)."""


@dataclass(kw_only=True)
class ModelConfig:
    init: str = "minilm"
    """BERT directory to start from (``minilm`` = the packaged MiniLM), or empty to build ``preset``
    from scratch."""
    preset: str = "demo"
    """Preset shape when ``init`` is empty (``models.config.PRESETS``)."""
    gradient_checkpointing: bool | None = None
    """Recompute each layer's activations in the backward pass (less memory, ~30 % more compute);
    None keeps the preset's (on for ``1.3b`` and ``3b``) or the initialisation's (off)."""
    hidden_dropout: float | None = None
    """Override of the hidden dropout (None keeps the initialisation's)."""
    attention_dropout: float | None = None
    """Override of the attention-probability dropout (None keeps the initialisation's)."""
    alignment_head: str | None = None
    """What the alignment classifier reads: ``cls`` (BERT's [CLS] head, the paper's) or ``pair``
    (the [CLS] head plus a bilinear score of the text's and the video's mean states); None keeps the
    initialisation's (``cls`` for a BERT, the recorded head for an export). Fixed for a run: a
    resume with another head is refused. See ``VideoBertConfig.alignment_head``."""
    kernels: str = "auto"
    """Kernel set of the fusable operations: ``auto`` (``triton`` on CUDA when Triton imports, else
    ``reference``), ``triton`` (needs a GPU) or ``reference`` (plain PyTorch). A run-time choice:
    the saved model config does not record it, so a checkpoint loads, evaluates and exports with any set."""


@dataclass(kw_only=True)
class ObjectivesConfig:
    joint_fraction: float = 0.6
    """Share of examples built as ``[CLS] text [>] video [SEP]``."""
    text_fraction: float = 0.2
    """Share of text-only examples (``[CLS] text [SEP]``)."""
    video_fraction: float = 0.2
    """Share of video-only examples (``[CLS] video [SEP]``)."""
    negative_rate: float = 0.5
    """Share of joint examples whose video comes from another segment (alignment negatives; the
    paper's way, used when ``negatives_per_positive`` is 0)."""
    negatives_per_positive: int = 0
    """K >= 1: every joint example stays aligned, keeps its masked-token targets, and K extra rows
    pair its text with other segments' videos (``negative_rate`` is then unused; a micro-batch of
    B examples carries up to B x (1 + K x joint_fraction) rows). 0: negatives replace positives
    at ``negative_rate``, as in the paper."""
    mlm_candidates: str | None = None
    """The words a masked position is predicted among: ``modality`` (its own modality's) or
    ``joint`` (the whole table); None keeps the model's (``modality`` unless a checkpoint says
    otherwise). See ``VideoBertConfig.mlm_candidates``."""
    alignment_loss: str = "binary"
    """``binary``: the paper's 2-way classifier loss on each row. ``listwise``: with
    ``negatives_per_positive`` >= 1, a softmax over each text's rows (its own video and K others,
    scored by the same head: aligned minus misaligned logit) whose target is its own video."""
    video_span_mask_prob: float = 0.0
    """Share of aligned joint examples whose whole video is masked (every visual token a target, no
    neighbour left to copy: the text must predict the video); those carry no alignment label."""
    text_mask_prob: float = 0.15
    """Probability that a text token is chosen for masked prediction."""
    video_mask_prob: float = 0.15
    """Probability that a visual token is chosen for masked prediction."""
    mlm_on_negatives: bool = False
    """Also mask tokens of misaligned pairs (their video misleads the text prediction)."""
    concat_prob: float = 0.3
    """Probability of concatenating a segment with its following neighbours of the same video."""
    concat_max: int = 3
    """Most neighbouring segments one example may join."""
    max_stride: int = 5
    """Video tokens are subsampled at a random stride in [1, max_stride]."""
    stride_min_tokens: int = 4
    """Subsampling keeps at least this many video tokens: only strides that do are drawn, so a
    short segment (a few clips) keeps all of its tokens rather than being cut to one."""
    text_mlm_weight: float | None = None
    """Weight of the masked text-token loss in the total loss (None: the model's, 1)."""
    video_mlm_weight: float | None = None
    """Weight of the masked visual-token loss (None: the model's, 1)."""
    alignment_weight: float | None = None
    """Weight of the text-video alignment loss (None: the model's, 1)."""


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate (the paper: 1e-5 for BERT-large at batch 128)."""
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "linear"
    """Decay after warm-up: ``linear`` or ``cosine`` (to ``min_lr_ratio`` x lr), or ``constant``."""
    min_lr_ratio: float = 0.0
    new_parameters_lr_multiplier: float = 1.0
    """Learning-rate factor for the parameters ``model.init`` lacks and that start from random
    values (the pretraining heads of an encoder-only BERT such as the packaged MiniLM), while the
    pretrained ones fine-tune at ``lr``. No effect on a model built from a preset."""
    grad_clip: float = 1.0
    micro_batch_size: int = 32
    """Examples per rank per forward pass."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (derived instead when ``global_batch_size`` is set)."""
    global_batch_size: int = 0
    """Examples per optimizer step over all ranks, kept at every number of ranks: the accumulation is
    derived as global / (micro_batch_size x ranks). 0 = micro_batch_size x grad_accum_steps x ranks."""
    precision: str = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp32), ``bf16`` or ``fp32``."""


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 500
    """Save every N optimizer steps (and on SIGTERM/SIGINT, and at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a newer one completes."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint of the run, if any), ``none``, or a ``step-N`` folder."""


@dataclass(kw_only=True)
class LoggingConfig:
    every_steps: int = 10
    """TensorBoard and console update interval in optimizer steps."""
    progress: bool = True
    """Console progress bar on rank 0."""
    peak_flops: float = 0.0
    """Peak FLOP/s per device for MFU; 0 = look the device up in ``trainer.metrics.PEAK_FLOPS``."""
    heldout_every_steps: int = 0
    """Also run the held-out pass (``data.heldout``) every N optimizer steps, logged as ``heldout/*``
    in TensorBoard and metrics.jsonl (the report plots them against steps); 0 = only at the end."""


@dataclass(kw_only=True)
class TrainConfig:
    run_dir: str = "runs/train"
    """Everything the run writes: TensorBoard events, checkpoints, the resolved config."""
    seed: int = 0
    max_steps: int = 1000
    """Optimizer steps to train for."""
    max_bad_steps: int = 10
    """Consecutive non-finite losses tolerated before training stops (with a checkpoint)."""
    deepspeed_config: str = ""
    """DeepSpeed config file (empty: the ``ds_config.json`` installed with the package); the trainer
    fills batch sizes, precision and clipping from this config."""
    dist_timeout_s: float = 0.0
    """How long a rank waits for the others in a collective before the job fails (seconds; 0 =
    torch's default): a node that vanished without closing its connections is noticed after this long."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                settings: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config of a recipe file (or the defaults), then ``section.field=value`` overrides, then
    ``settings`` (dotted key -> value already parsed, what the command line's flags give)."""
    path = resolve_recipe(path) if path else None
    raw = load_recipe(path) if path else {}
    try:
        for item in overrides:
            _apply_override(raw, item)
        for dotted, value in (settings or {}).items():
            _set(raw, dotted, value, f"--{dotted}")
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{e} (applied over the recipe {path})") from None
    problems: list[str] = []
    config = _build(TrainConfig, raw, "", problems)
    problems += validate(config)
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError(f"{len(problems)} problem(s) with the configuration{where}:\n  - " + "\n  - ".join(problems))
    return config


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe as a dict, its ``base`` chain merged in (base first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"recipe {path} names itself as a base (through {[str(p) for p in _seen]})")
    if not path.is_file():
        named_by = f" (the base named by {_seen[-1]})" if _seen else ""
        problem = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"recipe {path}{named_by} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {path} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise ConfigError(f"recipe {path} cannot be read: {e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:  # ValueError: JSONDecodeError
        raise ConfigError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"recipe {path} must be a mapping of sections (data:, model:, optim: ...), "
                          f"not a {type(data).__name__}")
    data = dict(data or {})
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"recipe {path}: base must name another recipe file, got {base!r}")
    return merge(load_recipe(path.parent / base, (*_seen, path)), data)


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for nested sections."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    dotted, text = item.split("=", 1)
    if not all(part.strip() for part in dotted.split(".")):
        raise ConfigError(f"override {item!r}: {dotted.strip()!r} is not a key of the form section.field")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    _set(raw, dotted.strip(), value, f"override {item!r}")


def _set(raw: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    """``raw[a][b] = value`` for ``dotted`` = ``a.b``, creating sections on the way."""
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {key} is not a section (it holds a {type(node).__name__})")
    node[keys[-1]] = value


def _shown_key(name: str) -> str:
    """A key as a message shows it: quoted where it is empty or has blanks at its ends or characters
    that do not print, so that the reader sees what was written."""
    return name if name and name.strip() == name and name.isprintable() else repr(name)


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{where or 'the recipe'} must be a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
            problems.append(f"unknown key {_shown_key(f'{where}{key}')}{hint}")
    values = {}
    for name in fields:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{where}{name}.", problems)
        else:
            value = _coerce(raw[name], hint, f"{where}{name}", problems)
            if value is not _INVALID:
                values[name] = value
    return cls(**values)


_INVALID = object()
"""Returned for a value of the wrong type (already reported): the field keeps its default so that
the cross-field checks can still run and report everything else."""


def _coerce(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if sections and isinstance(value, Mapping):
            return _build(sections[0], value, f"{where}.", problems)
        hint = next(a for a in args if a is not type(None) and not dataclasses.is_dataclass(a))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        items = [_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value if isinstance(value, list) else [value])]
        return _INVALID if _INVALID in items else items
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            problems.append(f"{where} must be a list of {len(args)} values, got {value!r}")
            return _INVALID
        items = tuple(_coerce(v, a, where, problems) for v, a in zip(value, args))
        return _INVALID if _INVALID in items else items
    return _scalar(value, hint, where, problems)


def _scalar(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        problems.append(f"{where} must be {hint.__name__}, got {value!r}")
        return _INVALID
    return value


# ---------------------------------------------------------------------------------------------
# validation


def validate(c: TrainConfig) -> list[str]:
    """Every cross-field problem of a config, each naming the fix."""
    p: list[str] = []
    if not c.data.train:
        p.append("data.train is empty: name the training shards (a folder, glob, brace pattern or pipe: URL)")
    p += _validate_sources(c.data.train)
    p += _validate_sources(c.data.heldout, "data.heldout")
    if not c.data.codebook:
        p.append("data.codebook is empty: name the codebook file written by `videobert shards fit-codebook`")
    if c.data.max_seq_len < 8:
        p.append(f"data.max_seq_len={c.data.max_seq_len} is too short: use at least 8")
    _positive(p, "data.shuffle_buffer", c.data.shuffle_buffer)
    _positive(p, "data.prefetch_factor", c.data.prefetch_factor)
    if c.data.num_workers < 0:
        p.append("data.num_workers must be >= 0")
    if not c.model.init and not c.model.preset:
        p.append("model.init and model.preset are both empty: set one (a BERT directory, or a preset name)")
    if not c.model.init and not c.data.text_model:
        p.append("data.text_model is empty and there is no model.init to take the tokenizer from: name a BERT directory (or minilm)")
    if c.model.kernels not in KERNEL_CHOICES:
        p.append(f"model.kernels={c.model.kernels!r}: use one of {', '.join(KERNEL_CHOICES)}")
    p += _validate_objectives(c.objectives)
    p += _validate_optim(c.optim)
    _positive(p, "max_steps", c.max_steps)
    _positive(p, "max_bad_steps", c.max_bad_steps)
    if c.dist_timeout_s < 0:
        p.append("dist_timeout_s must be >= 0 (0 = torch's default)")
    _positive(p, "checkpoint.every_steps", c.checkpoint.every_steps)
    _positive(p, "checkpoint.keep_last", c.checkpoint.keep_last)
    _positive(p, "logging.every_steps", c.logging.every_steps)
    if c.logging.heldout_every_steps < 0:
        p.append(f"logging.heldout_every_steps={c.logging.heldout_every_steps} must be >= 0 (0 = only at the end)")
    return p


def source_name(source: TrainSource) -> str:
    """A source's name: given, or its first path's last part."""
    if source.name:
        return source.name
    first = source.path[0].rstrip("/") if source.path else ""
    return Path(first).name or first


def shard_specs(entries: list[str | TrainSource]) -> list[str]:
    """Every shard spec of ``data.train`` or ``data.heldout``, whatever the entries' form."""
    return [spec for entry in entries for spec in (entry.path if isinstance(entry, TrainSource) else [entry])]


def heldout_sources(data: DataConfig) -> list[tuple[str, list[str]]]:
    """(name, shard specs) of each named held-out source (none when ``data.heldout`` is plain specs)."""
    return [(source_name(e), list(e.path)) for e in data.heldout if isinstance(e, TrainSource)]


def _validate_sources(entries: list[str | TrainSource], key: str = "data.train") -> list[str]:
    sources = [e for e in entries if isinstance(e, TrainSource)]
    if not sources:
        return []
    form = "{path: SHARDS, weight: W}" if key == "data.train" else "{path: SHARDS, name: N}"
    if len(sources) != len(entries):
        kind = "sources with weights" if key == "data.train" else "named sources"
        return [f"{key} mixes plain shard specs and {kind}: write every entry as {form}, or none"]
    p = [f"{key}[{i}]: no path: name its shards" for i, s in enumerate(sources) if not s.path]
    if key == "data.train":
        p += [f"{key}[{i}].weight={s.weight} must be positive" for i, s in enumerate(sources) if not s.weight > 0]
    else:
        p += [f"{key}[{i}].weight={s.weight}: held-out sources are evaluated each on its own and together, not "
              "mixed by weight: leave the weight out" for i, s in enumerate(sources) if s.weight != 1.0]
    names = [source_name(s) for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        p.append(f"{key}: the sources' names {twice} are not unique: give each source a name")
    bad = sorted(n for n in names if not n or "/" in n)
    if bad and key != "data.train":
        p.append(f"{key}: source names {bad} cannot name TensorBoard tags: give each a name without '/'")
    return p


def _validate_objectives(o: ObjectivesConfig) -> list[str]:
    p: list[str] = []
    shares = (o.joint_fraction, o.text_fraction, o.video_fraction)
    if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-6:
        p.append(
            f"objectives.joint_fraction + text_fraction + video_fraction = {sum(shares):g}: "
            "they are shares of the examples and must be non-negative and add up to 1"
        )
    for name in ("negative_rate", "text_mask_prob", "video_mask_prob", "concat_prob", "video_span_mask_prob"):
        value = getattr(o, name)
        if not 0.0 <= value <= 1.0:
            p.append(f"objectives.{name}={value} must lie in [0, 1]")
    if o.negatives_per_positive < 0:
        p.append(f"objectives.negatives_per_positive={o.negatives_per_positive} must be >= 0 (0 = the paper's way)")
    if o.alignment_loss not in ALIGNMENT_LOSSES:
        p.append(f"objectives.alignment_loss={o.alignment_loss!r}: use one of {', '.join(ALIGNMENT_LOSSES)}")
    elif o.alignment_loss == "listwise" and o.negatives_per_positive < 1:
        p.append("objectives.alignment_loss=listwise scores each text against its own video and K others: "
                 "set objectives.negatives_per_positive >= 1")
    if o.concat_max < 1:
        p.append("objectives.concat_max must be >= 1 (1 = no concatenation)")
    if o.max_stride < 1:
        p.append("objectives.max_stride must be >= 1 (1 = no subsampling)")
    if o.stride_min_tokens < 1:
        p.append("objectives.stride_min_tokens must be >= 1")
    for name in ("text_mlm_weight", "video_mlm_weight", "alignment_weight"):
        value = getattr(o, name)
        if value is not None and value < 0:
            p.append(f"objectives.{name}={value} must be >= 0")
    return p


def _validate_optim(o: OptimConfig) -> list[str]:
    p: list[str] = []
    _positive(p, "optim.lr", o.lr)
    _positive(p, "optim.micro_batch_size", o.micro_batch_size)
    _positive(p, "optim.grad_accum_steps", o.grad_accum_steps)
    if o.schedule not in ("linear", "cosine", "constant"):
        p.append(f"optim.schedule={o.schedule!r}: use linear, cosine or constant")
    if o.precision not in ("auto", "bf16", "fp32"):
        p.append(f"optim.precision={o.precision!r}: use auto, bf16 or fp32")
    if o.warmup_steps < 0:
        p.append("optim.warmup_steps must be >= 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        p.append("optim.min_lr_ratio must lie in [0, 1]")
    if o.new_parameters_lr_multiplier <= 0:
        p.append("optim.new_parameters_lr_multiplier must be > 0 (1 = the same learning rate as the rest)")
    if o.grad_clip < 0:
        p.append("optim.grad_clip must be >= 0 (0 = no clipping)")
    if o.global_batch_size < 0:
        p.append("optim.global_batch_size must be >= 0 (0 = micro_batch_size x grad_accum_steps x ranks)")
    elif o.global_batch_size and o.grad_accum_steps != 1:
        p.append("optim.global_batch_size and optim.grad_accum_steps are both set: the accumulation is derived "
                 "from the global batch; leave optim.grad_accum_steps at 1")
    elif o.global_batch_size and o.micro_batch_size > 0 and o.global_batch_size % o.micro_batch_size:
        p.append(f"optim.global_batch_size={o.global_batch_size} is not a multiple of optim.micro_batch_size="
                 f"{o.micro_batch_size}: use micro-batches of {_divisors(o.global_batch_size)[:12]}")
    return p


@dataclass(frozen=True)
class BatchSizes:
    """How one optimizer step's examples are split: micro-batch x accumulation x ranks."""

    micro: int
    accumulation: int
    ranks: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.accumulation * self.ranks


def batch_sizes(o: OptimConfig, ranks: int) -> BatchSizes:
    """The sizes at ``ranks`` ranks; with ``optim.global_batch_size`` the accumulation is derived so that
    the global batch holds, and a ``ConfigError`` names the sizes that work where it cannot divide."""
    if not o.global_batch_size:
        return BatchSizes(o.micro_batch_size, o.grad_accum_steps, ranks)
    per_pass = o.micro_batch_size * ranks
    if o.global_batch_size % per_pass == 0:
        return BatchSizes(o.micro_batch_size, o.global_batch_size // per_pass, ranks)
    passes = o.global_batch_size // o.micro_batch_size
    micros = [m for m in _divisors(o.global_batch_size) if o.global_batch_size % (m * ranks) == 0]
    raise ConfigError(
        f"optim.global_batch_size={o.global_batch_size} cannot be split over {ranks} ranks with optim.micro_batch_size="
        f"{o.micro_batch_size} ({o.global_batch_size} is not a multiple of {o.micro_batch_size} x {ranks}). Numbers of "
        f"ranks that work with this micro-batch: {_divisors(passes)}; micro-batch sizes that work at {ranks} ranks: "
        f"{micros or 'none'}; or choose a global batch that is a multiple of {per_pass}"
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _positive(problems: list[str], name: str, value: float) -> None:
    if not value > 0:
        problems.append(f"{name}={value} must be positive")


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")

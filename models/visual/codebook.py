"""The codebook: a fitted hierarchical k-means tree plus the identity of the features it was fitted on.

One versioned file (safetensors: one float32 tensor per level, JSON metadata, no pickle) holds

    level_0 ... level_{d-1}   (k**l, k, D) centroids of the k children of every node of level l
    metadata["codebook"]      JSON: format version, the encoder spec (name, fps, clip length, frame
                              size, feature dim), depth, branching, seed, feature count, inertia per
                              level, and the content hash

The content hash covers everything that decides which token a clip gets: the encoder spec, the
tree's shape and the centroid values. Token shards record it, and whatever reads token shards with
a codebook compares the two (``check_hash``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videobert.models.errors import VideoBertError
from videobert.models.visual.encoder import EncoderSpec
from videobert.models.visual.kmeans import HierarchicalKMeans, assign_hierarchical

CODEBOOK_FORMAT = "videobert-codebook"
CODEBOOK_VERSION = 1
CODEBOOK_FILE = "codebook.safetensors"
"""The file name a codebook gets inside a folder (``Codebook.load`` accepts the folder too)."""
_META_KEY = "codebook"


class CodebookError(VideoBertError, ValueError):
    """A codebook file is missing, damaged, or does not match the clips / tokens / encoder given."""


@dataclass(eq=False)
class Codebook:
    """Centroids per level of a hierarchical k-means tree and the encoder identity they belong to."""

    spec: EncoderSpec
    centroids: list[torch.Tensor]
    """Level l: (branching**l, branching, D) float32."""
    seed: int = 0
    feature_count: int = 0
    inertia: list[float] = field(default_factory=list)
    _hash: str | None = field(default=None, init=False, repr=False)
    _on_device: dict[str, list[torch.Tensor]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.centroids = [c.detach().to("cpu", torch.float32).contiguous() for c in self.centroids]
        k = self.centroids[0].shape[1] if self.centroids else 0
        for level, c in enumerate(self.centroids):
            expected = (k**level, k, self.spec.feature_dim)
            if tuple(c.shape) != expected:
                raise CodebookError(f"level {level} centroids have shape {tuple(c.shape)}, expected {expected}")
        if not self.centroids:
            raise CodebookError("a codebook needs at least one level")

    @classmethod
    def from_fit(cls, fit: HierarchicalKMeans, spec: EncoderSpec) -> "Codebook":
        """Wrap a fitted tree with the spec of the encoder whose features it was fitted on."""
        if fit.feature_dim != spec.feature_dim:
            raise CodebookError(
                f"features are {fit.feature_dim}-d but encoder {spec.name!r} gives {spec.feature_dim}-d"
            )
        return cls(
            spec=spec, centroids=list(fit.centroids), seed=fit.config.seed,
            feature_count=fit.feature_count, inertia=list(fit.inertia),
        )

    # -- shape --------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self.centroids)

    @property
    def branching(self) -> int:
        return int(self.centroids[0].shape[1])

    @property
    def num_leaves(self) -> int:
        """Number of visual words: branching ** depth."""
        return self.branching**self.depth

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    @property
    def hash(self) -> str:
        """Content hash (16 hex digits) of the spec, the tree's shape and the centroid values."""
        if self._hash is None:
            self._hash = _content_hash(self.spec, self.centroids)
        return self._hash

    # -- use ----------------------------------------------------------------------------------

    def centroids_on(self, device: torch.device | str) -> list[torch.Tensor]:
        """The centroids on ``device`` (copied once per device, then reused)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = [c.to(device) for c in self.centroids]
        return self._on_device[key]

    def assign(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Leaf ids (N,) int64 in [0, num_leaves) of features (N, D), on the features' device."""
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(np.ascontiguousarray(features))
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise CodebookError(
                f"features must be (N, {self.feature_dim}) for this codebook ({self.spec.name}), "
                f"got {tuple(features.shape)}"
            )
        return assign_hierarchical(features.float(), self.centroids_on(features.device))

    def leaf_centroids(self) -> torch.Tensor:
        """(num_leaves, D): the centroid each leaf id stands for (row = leaf id)."""
        return self.centroids[-1].reshape(-1, self.feature_dim)

    # -- checks -------------------------------------------------------------------------------

    def check_clips(self, *, fps: float, clip_len: int, frame_size: tuple[int, int], where: str = "clips") -> None:
        """Raise ``CodebookError`` when clips were prepared otherwise than the codebook's encoder expects."""
        wrong = self.spec.mismatches(fps=fps, clip_len=clip_len, frame_size=tuple(frame_size))
        if wrong:
            raise CodebookError(
                f"{where}: prepared with " + ", ".join(wrong) + f"; codebook {self.hash} was fitted on "
                f"{self.spec.name!r} features of clips at {self.spec.fps:g} fps, {self.spec.clip_len} "
                f"frames, {tuple(self.spec.frame_size)} pixels; prepare the clips with those settings"
            )

    def check_encoder(self, spec: EncoderSpec, where: str = "encoder") -> None:
        """Raise ``CodebookError`` unless ``spec`` is the encoder this codebook was fitted with."""
        if spec != self.spec:
            raise CodebookError(
                f"{where}: {_describe(spec)} does not match codebook {self.hash}, fitted on {_describe(self.spec)}"
            )

    def check_hash(self, codebook_hash: str | None, where: str = "tokens") -> None:
        """Raise ``CodebookError`` when ``where`` (tokens, a model) was made with another codebook."""
        check_hash(self.hash, codebook_hash, where)

    # -- files --------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Everything but the centroid values, as JSON-ready data (summaries print this)."""
        return {
            "format": CODEBOOK_FORMAT, "format_version": CODEBOOK_VERSION, "hash": self.hash,
            "encoder": self.spec.to_dict(), "depth": self.depth, "branching": self.branching,
            "num_leaves": self.num_leaves, "seed": self.seed, "feature_count": self.feature_count,
            "inertia": list(self.inertia),
        }

    def save(self, path: str | Path) -> Path:
        """Write the codebook to ``path`` (a file, or a folder that gets ``codebook.safetensors``)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir():
            path = path / CODEBOOK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"level_{i}": c for i, c in enumerate(self.centroids)}
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata={_META_KEY: json.dumps(self.metadata(), sort_keys=True)})
        partial.replace(path)  # a reader never sees half a codebook
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Codebook":
        """Read a codebook file (or a folder holding ``codebook.safetensors``); verifies its hash.

        A damaged or foreign file is a ``CodebookError`` that names the file and what is wrong."""
        path = resolve_codebook_path(path)
        meta, tensors = _read_file(path)
        spec = _spec_of(meta, path)
        depth = meta.get("depth")
        if not _is_int(depth) or not 1 <= depth <= len(tensors):
            raise CodebookError(f"{path}: depth {depth!r} does not match the {len(tensors)} centroid tensors it holds")
        missing = [f"level_{i}" for i in range(depth) if f"level_{i}" not in tensors]
        if missing:
            raise CodebookError(f"{path}: codebook tensors {missing} are missing")
        centroids = [tensors[f"level_{i}"] for i in range(depth)]
        wrong = [f"level_{i} is {c.dtype} of shape {tuple(c.shape)}" for i, c in enumerate(centroids)
                 if c.dim() != 3 or not c.is_floating_point()]
        if wrong:
            raise CodebookError(f"{path}: centroids must be float tensors (nodes, branching, D): {'; '.join(wrong)}")
        try:
            book = cls(spec=spec, centroids=centroids, seed=int(meta.get("seed", 0)),
                       feature_count=int(meta.get("feature_count", 0)),
                       inertia=[float(x) for x in meta.get("inertia", [])])
        except (TypeError, ValueError) as e:  # CodebookError (a shape that does not fit) is a ValueError too
            raise CodebookError(f"{path}: {e}") from None
        if book.hash != meta.get("hash"):
            raise CodebookError(
                f"{path}: content hash {book.hash} differs from the recorded {meta.get('hash')}; the file is damaged"
            )
        return book


def resolve_codebook_path(path: str | Path) -> Path:
    """The codebook file a user named: the path itself, or ``codebook.safetensors`` in a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CODEBOOK_FILE
    if not path.is_file():
        raise CodebookError(f"no codebook file at {path}; fit one with `videobert shards fit-codebook`")
    return path


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    # safetensors reports a damaged header or data with any of these.
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise CodebookError(f"{path}: not a codebook file (cannot read it as safetensors: {e})") from None
    if raw is None:
        raise CodebookError(f"{path}: a safetensors file without codebook metadata; not a codebook")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CodebookError(f"{path}: its codebook metadata is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != CODEBOOK_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CodebookError(f"{path}: format {found!r} is not {CODEBOOK_FORMAT!r}")
    version = meta.get("format_version")
    if not _is_int(version):
        raise CodebookError(f"{path}: codebook format version {version!r} is not a number")
    if version > CODEBOOK_VERSION:
        raise CodebookError(
            f"{path}: codebook format version {version} is newer than this "
            f"version reads ({CODEBOOK_VERSION}); upgrade videobert"
        )
    return meta, tensors


def _spec_of(meta: dict[str, Any], path: Path) -> EncoderSpec:
    """The encoder spec a codebook's metadata records, checked field by field."""
    d = meta.get("encoder")
    rules = {
        "name": (lambda v: isinstance(v, str) and bool(v), "a name"),
        "fps": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf, "a positive number"),
        "clip_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "frame_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v),
                       "[height, width]"),
        "feature_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    }
    if not isinstance(d, dict) or set(d) != set(rules):
        raise CodebookError(f"{path}: the encoder record must hold exactly {sorted(rules)}, found "
                            f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    wrong = [f"{name} is {d[name]!r}, expected {what}" for name, (valid, what) in rules.items() if not valid(d[name])]
    if wrong:
        raise CodebookError(f"{path}: encoder record: {'; '.join(wrong)}")
    return EncoderSpec.from_dict(d)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_hash(expected: str, found: str | None, where: str) -> None:
    """Raise ``CodebookError`` unless ``where`` was made with codebook ``expected`` (``found``: the
    hash it records). The one comparison of codebook identities."""
    if found != expected:
        raise CodebookError(
            f"{where} was made with codebook {found}, but the codebook here is {expected}; use the codebook "
            "it was made with, or tokenize again with this one"
        )


def _content_hash(spec: EncoderSpec, centroids: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    identity = {"encoder": spec.to_dict(), "shapes": [list(c.shape) for c in centroids]}
    digest.update(json.dumps(identity, sort_keys=True).encode("utf-8"))
    for c in centroids:
        digest.update(c.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()[:16]


def _describe(spec: EncoderSpec) -> str:
    return (
        f"encoder {spec.name!r} ({spec.fps:g} fps, {spec.clip_len} frames, {tuple(spec.frame_size)} "
        f"pixels, {spec.feature_dim}-d features)"
    )

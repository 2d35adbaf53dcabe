"""Shards and codebooks written through the real schema, for the data-pipeline and trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videobert.shards import schema
from videobert.shards.writer import ShardWriter

WORDS = "cut stir pour shake roll flip press lift".split()
NOUNS = "tomato egg carrot onion cheese bread lemon potato".split()


def write_token_shards(folder: Path, *, videos: int, segments: int, shards: int, num_tokens: int = 50,
                       codebook_hash: str = "test-codebook", seed: int = 0) -> list[str]:
    """``videos`` x ``segments`` samples in ``shards`` shards (the real writer), a video's segments
    kept together. A segment's tokens depend on its verb and noun, and its text names them, so a
    model can learn the pairing."""
    rng = np.random.default_rng(seed)
    samples = [_segment(v, g, rng, num_tokens, codebook_hash) for v in range(videos) for g in range(segments)]
    _write(folder, samples, per_shard=-(-videos // shards) * segments)
    return [s.key for s in samples]


def _write(folder: Path, samples: list[schema.Sample], per_shard: int) -> None:
    with ShardWriter(folder, max_samples=per_shard) as writer:
        for i, sample in enumerate(samples):
            writer.write(sample, (i,))


def _segment(v: int, g: int, rng, num_tokens: int, codebook_hash: str) -> schema.Sample:
    verb, noun = int(rng.integers(len(WORDS))), int(rng.integers(len(NOUNS)))
    n_clips = int(rng.integers(2, 7))
    tokens = ((verb * len(NOUNS) + noun) % num_tokens + rng.integers(0, 2, n_clips)) % num_tokens
    meta = schema.SampleMeta(
        video_id=f"video{v:03d}", segment_index=g, start=2.0 * g, end=2.0 * g + 1.5, fps=10.0, clip_len=15,
        frame_size=(64, 64), n_clips=n_clips, first_frame=20 * g, source="test", kind=schema.TOKEN_KIND,
        codebook_hash=codebook_hash,
    )
    text = f"now let me show you how to {WORDS[verb]} the {NOUNS[noun]}"
    return schema.Sample(key=schema.make_key(meta.video_id, g), text=text, meta=meta,
                         tokens=tokens.astype(np.int32))



def write_codebook(path: Path, *, branching: int = 8, depth: int = 2, feature_dim: int = 8, seed: int = 0):
    """A codebook file (random centroids: the trainer only needs its vocabulary size and hash)."""
    import torch

    from videobert.models.visual.codebook import Codebook
    from videobert.models.visual.encoder import EncoderSpec

    g = torch.Generator().manual_seed(seed)
    spec = EncoderSpec(name="synthetic", fps=10.0, clip_len=15, frame_size=(64, 64), feature_dim=feature_dim)
    centroids = [torch.randn(branching**level, branching, feature_dim, generator=g) for level in range(depth)]
    codebook = Codebook(spec=spec, centroids=centroids, seed=seed)
    codebook.save(path)
    return codebook



def write_clip_shards(folder: Path, *, videos: int, segments: int, shards: int, clip_len: int = 5,
                      size: int = 32, seed: int = 0) -> None:
    """Clip shards of small moving coloured squares (real pixels for the synthetic encoder)."""
    rng = np.random.default_rng(seed)
    samples = [_clip_segment(v, g, rng, clip_len, size) for v in range(videos) for g in range(segments)]
    _write(folder, samples, per_shard=-(-videos // shards) * segments)


def _clip_segment(v: int, g: int, rng, clip_len: int, size: int) -> schema.Sample:
    n_clips = int(rng.integers(1, 4))
    frames = np.full((n_clips, clip_len, size, size, 3), 40, np.uint8)
    colour = rng.integers(60, 255, 3)
    for c in range(n_clips):
        for t in range(clip_len):
            x = int(4 + (t * int(rng.integers(1, 3))) % (size - 12))
            frames[c, t, 8:16, x : x + 8] = colour
    meta = schema.SampleMeta(
        video_id=f"video{v:03d}", segment_index=g, start=2.0 * g, end=2.0 * g + 1.5, fps=10.0, clip_len=clip_len,
        frame_size=(size, size), n_clips=n_clips, first_frame=20 * g, source="test",
    )
    return schema.Sample(key=schema.make_key(meta.video_id, g), text=f"now we cut the {NOUNS[v % len(NOUNS)]}",
                         meta=meta, frames=frames)


def fit_codebook_on(clip_folder: Path, path: Path, *, branching: int = 4, depth: int = 2):
    """A real codebook: the synthetic encoder's features of the clips, hierarchical k-means."""
    import torch

    from videobert.models.visual.codebook import Codebook
    from videobert.models.visual.kmeans import fit_hierarchical_kmeans
    from videobert.models.visual.synthetic import SyntheticEncoder
    from videobert.shards import reader

    samples = list(reader.iter_samples(reader.resolve_shards(clip_folder)))
    first = samples[0].meta
    encoder = SyntheticEncoder(fps=first.fps, clip_len=first.clip_len, frame_size=first.frame_size)
    clips = torch.from_numpy(np.concatenate([s.frames for s in samples]))
    features = encoder(clips).numpy()
    fit = fit_hierarchical_kmeans(features, depth=depth, branching=branching, seed=0, device="cpu")
    codebook = Codebook.from_fit(fit, encoder.spec)
    codebook.save(path)
    return codebook

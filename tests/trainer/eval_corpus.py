"""A tiny labelled corpus for the evaluation tests, written through the real schema.

Every segment shows one verb and one noun. Its visual tokens name them (the first clip's token is
the verb's, the second the noun's, further clips repeat one of the two), and its training caption is
the zero-shot template itself, so that a model can only tell the masked verb and noun of the template
from the video. Clip shards hold real pixels (a coloured square per noun, moving as the verb says),
for the pictures; a codebook with random centroids over the synthetic encoder's features gives the
visual vocabulary (16 words) and its hash.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from videobert.shards import schema

VERBS = ("stir", "shake", "roll", "flip")
NOUNS = ("tomato", "lemon", "bread", "cheese")
TEMPLATE = "now let me show you how to {verb} the {noun}"
FPS, CLIP_LEN, SIZE = 10.0, 5, 32
SEGMENT_SECONDS = 2.0


def write_codebook(path: Path, seed: int = 0):
    """A 4 x 4 codebook over the synthetic encoder's features (random centroids)."""
    import torch

    from videobert.models.visual.codebook import Codebook
    from videobert.models.visual.encoder import EncoderSpec
    from videobert.models.visual.synthetic import FEATURE_DIM

    g = torch.Generator().manual_seed(seed)
    spec = EncoderSpec(name="synthetic", fps=FPS, clip_len=CLIP_LEN, frame_size=(SIZE, SIZE), feature_dim=FEATURE_DIM)
    codebook = Codebook(spec=spec, centroids=[torch.randn(4**level, 4, FEATURE_DIM, generator=g) for level in range(2)],
                        seed=seed)
    codebook.save(path)
    return codebook


def plan(videos: int, segments: int, seed: int) -> list[dict]:
    """(video, segment, verb, noun, clip count) of every segment."""
    rng = np.random.default_rng(seed)
    return [{"video": f"{'train' if seed == 0 else 'held'}{v:03d}", "segment": g, "verb": int(rng.integers(len(VERBS))),
             "noun": int(rng.integers(len(NOUNS))), "clips": int(rng.integers(2, 5)), "pick": rng.integers(0, 2, 4)}
            for v in range(videos) for g in range(segments)]


def _tokens(p: dict) -> np.ndarray:
    choices = (p["verb"], len(VERBS) + p["noun"])
    return np.array([choices[0], choices[1], *(choices[int(c)] for c in p["pick"][: p["clips"] - 2])], dtype=np.int32)


def _frames(p: dict) -> np.ndarray:
    """(clips, CLIP_LEN, SIZE, SIZE, 3): a square of the noun's colour moving along the verb's direction."""
    colours = np.array([(220, 30, 30), (230, 220, 40), (150, 90, 40), (240, 180, 20)], dtype=np.uint8)
    steps = np.array([(1, 0), (0, 1), (1, 1), (-1, 1)])
    frames = np.full((p["clips"], CLIP_LEN, SIZE, SIZE, 3), 80, dtype=np.uint8)
    for c in range(p["clips"]):
        for t in range(CLIP_LEN):
            y, x = 12 + steps[p["verb"]] * (t - CLIP_LEN // 2)
            frames[c, t, y : y + 8, x : x + 8] = colours[p["noun"]]
    return frames


def _meta(p: dict, kind: str, codebook_hash: str | None) -> schema.SampleMeta:
    start = SEGMENT_SECONDS * p["segment"]
    return schema.SampleMeta(
        video_id=p["video"], segment_index=p["segment"], start=start, end=start + SEGMENT_SECONDS - 0.1, fps=FPS,
        clip_len=CLIP_LEN, frame_size=(SIZE, SIZE), n_clips=p["clips"], first_frame=int(start * FPS), source="test",
        kind=kind, codebook_hash=codebook_hash,
    )


def write_shards(folder: Path, plans: list[dict], shards: int, *, codebook_hash: str | None = None) -> None:
    """Token shards (with ``codebook_hash``) or clip shards (without), a video's segments kept together."""
    folder.mkdir(parents=True, exist_ok=True)
    videos = sorted({p["video"] for p in plans})
    per_shard = -(-len(videos) // shards)
    for s in range(shards):
        mine = [p for p in plans if p["video"] in videos[s * per_shard : (s + 1) * per_shard]]
        path = folder / schema.shard_name(s)
        with wds.TarWriter(str(path)) as writer:
            for p in mine:
                kind = schema.TOKEN_KIND if codebook_hash else schema.CLIP_KIND
                text = TEMPLATE.format(verb=VERBS[p["verb"]], noun=NOUNS[p["noun"]])
                sample = schema.Sample(key=schema.make_key(p["video"], p["segment"]), text=text, meta=_meta(p, kind, codebook_hash),
                                       tokens=_tokens(p) if codebook_hash else None, frames=None if codebook_hash else _frames(p))
                writer.write(schema.encode_sample(sample))
        schema.stats_path(path).write_text(json.dumps({"samples": len(mine), "clips": sum(p["clips"] for p in mine)}))


def write_labels(root: Path, plans: list[dict]) -> tuple[Path, Path]:
    """labels.jsonl (the synthetic corpus's form) and vocabulary.json for ``plans``."""
    labels = root / "labels.jsonl"
    labels.write_text("".join(json.dumps({"video": p["video"], "start": SEGMENT_SECONDS * p["segment"],
                                          "end": SEGMENT_SECONDS * (p["segment"] + 1), "verb": VERBS[p["verb"]],
                                          "noun": NOUNS[p["noun"]]}) + "\n" for p in plans))
    vocabulary = root / "vocabulary.json"
    vocabulary.write_text(json.dumps({"verbs": list(VERBS), "nouns": list(NOUNS)}))
    return labels, vocabulary


def write_corpus(root: Path) -> dict[str, Path]:
    """Codebook, train/held-out token shards, held-out clip shards, labels and vocabulary under ``root``."""
    codebook = write_codebook(root / "codebook.safetensors")
    train, held = plan(48, 4, seed=0), plan(8, 4, seed=1)
    write_shards(root / "train", train, 4, codebook_hash=codebook.hash)
    write_shards(root / "heldout", held, 2, codebook_hash=codebook.hash)
    write_shards(root / "clips", held, 2)
    labels, vocabulary = write_labels(root, held)
    return {"root": root, "codebook": root / "codebook.safetensors", "train": root / "train", "heldout": root / "heldout",
            "clips": root / "clips", "labels": labels, "vocabulary": vocabulary}

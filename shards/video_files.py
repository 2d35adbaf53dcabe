"""The videos of a run: listed in argument order with their ids (a later file with an id already
taken is reported, not used), a part's share of them numbered from 0, and a fingerprint of the input
files that a resumed run must match. Shared by ``prepare`` and ``tokenize-videos``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from videobert.shards.parts import Part, in_sample
from videobert.shards.transcript_entries import Problem
from videobert.shards.transcripts import files_under, is_transcript_file, is_video_file


@dataclass(frozen=True)
class VideoFile:
    order: int
    """Position in the run's video order (the first element of every sample position)."""
    video_id: str
    path: str


@dataclass
class VideoFiles:
    """What ``list_videos`` found."""

    videos: list[VideoFile]
    duplicates: list[Problem]
    """Later files with an id already taken (reported, not used)."""
    ignored: set[Path] = field(default_factory=set)
    """Files inside the folders that are neither videos nor transcripts."""


def list_videos(paths: Iterable[str | os.PathLike]) -> VideoFiles:
    """Video files in argument order (folders: video files inside, sorted); later files with an id
    already taken are reported, not used."""
    found: list[Path] = []
    ignored: set[Path] = set()
    for item in paths:
        path = Path(item)
        if path.is_dir():
            inside = files_under(path)
            found += [p for p in inside if is_video_file(p)]
            ignored.update(p.absolute() for p in inside if not is_video_file(p) and not is_transcript_file(p))
        else:
            found.append(path)
    videos: list[VideoFile] = []
    problems: list[Problem] = []
    by_id: dict[str, VideoFile] = {}
    seen_paths: set[Path] = set()
    for path in found:
        if path.absolute() in seen_paths:
            continue
        seen_paths.add(path.absolute())
        first = by_id.get(path.stem)
        if first is not None:
            problems.append(Problem(
                input=str(path), video_id=path.stem, segment=None, segments=0,
                reason=f"video id {path.stem} is already taken by {first.path}; {path} is not used",
            ))
            continue
        by_id[path.stem] = VideoFile(len(videos), path.stem, str(path))
        videos.append(by_id[path.stem])
    return VideoFiles(videos, problems, ignored)


@dataclass(frozen=True)
class SampledPart(Part):
    """A part that owns only the videos of ``--sample``'s share (``shards.parts.in_sample``)."""

    share: float = 1.0

    def owns_video(self, video_id: str) -> bool:
        return super().owns_video(video_id) and in_sample(video_id, self.share)


def part_videos(found: VideoFiles, part: Part) -> VideoFiles:
    """The videos (and duplicates) a part owns, numbered in order from 0 (its positions)."""
    videos = [dataclasses.replace(v, order=i) for i, v in enumerate(v for v in found.videos if part.owns_video(v.video_id))]
    duplicates = [p for p in found.duplicates if part.owns_video(p.video_id)]
    return VideoFiles(videos, duplicates, found.ignored if part.first else set())


def inputs_fingerprint(videos: Sequence[VideoFile], transcript_files: Sequence[Path]) -> str:
    """A hash of the input files' names and sizes: a resumed run must see the same inputs."""
    digest = hashlib.sha256()
    for kind, path in [("video", Path(v.path)) for v in videos] + [("transcript", p) for p in transcript_files]:
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"{kind}\t{path.absolute()}\t{size}\n".encode("utf-8", errors="surrogateescape"))
    return digest.hexdigest()

"""Hierarchical k-means: the tree of centroids that turns clip features into visual words.

The tree has ``depth`` levels and ``branching`` children per node (the paper: 4 x 12 = 20,736
leaves). Level ``l`` holds ``branching**l`` nodes, each with ``branching`` centroids fitted on the
features that reached that node; a feature's leaf id is the base-``branching`` number spelled by the
centroid it picks at each level.

All nodes of a level are fitted together: every pass over the features assigns each one to the
nearest of its own node's centroids with one grouped kernel call (``models.kernels.kmeans_assign``)
and accumulates per-centroid sums with one ``index_add_``, so the cost does not grow with the
number of nodes the way one k-means per node does.

Per level:

1. **k-means++ seeding** (greedy, with ``2 + log k`` trials per centre) for every node at once, on an
   in-memory sample of at most ``init_per_cluster * branching`` features per node (and at most
   ``init_sample_bytes`` in all), drawn uniformly within each node.
2. **Lloyd iterations** over all features, streamed from disk in chunks of ``chunk_rows``: only the
   chunk, the centroids, the per-centroid sums of the members' offsets from their centroid (small
   numbers, so their sums stay precise) and one int64 label per feature are in memory.
3. **Empty-cluster repair**: an empty centroid is moved onto the farthest member of the node's
   cluster that has the largest such distance (each donor gives one distinct point).

Everything random comes from one CPU ``torch.Generator`` seeded with ``seed``, so a fit is
deterministic on a given device. Runs on CUDA when present, otherwise on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from videobert.models.errors import MissingFileError
from videobert.models.kernels.kmeans_assign import kmeans_assign


@dataclass(frozen=True, kw_only=True)
class KMeansConfig:
    """How to fit the tree."""

    depth: int = 4
    """Levels of the tree."""
    branching: int = 12
    """Children per node; the tree has ``branching ** depth`` leaves."""
    seed: int = 0
    """Seed of every random choice (sampling, k-means++)."""
    max_iter: int = 40
    """Most Lloyd iterations per level."""
    tol: float = 1e-4
    """Stop a level when one iteration lowers its inertia by less than this fraction."""
    chunk_rows: int | None = None
    """Features per streamed chunk; default: about 4 MiB of float32 features on the CPU (temporaries
    stay cache- and allocator-friendly), 256 MiB on a GPU."""
    init_per_cluster: int = 32
    """k-means++ sees up to this many features per centroid of each node."""
    init_sample_bytes: int = 1 << 29
    """Memory bound of the k-means++ sample of one level (float32 features)."""
    device: str | None = None
    """``cuda``, ``cpu``, ...; default: CUDA when present."""

    def __post_init__(self) -> None:
        problems = []
        if self.depth < 1:
            problems.append(f"depth must be >= 1 (got {self.depth})")
        if self.branching < 2:
            problems.append(f"branching must be >= 2 (got {self.branching})")
        if self.max_iter < 1:
            problems.append(f"max_iter must be >= 1 (got {self.max_iter})")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            problems.append(f"chunk_rows must be >= 1 (got {self.chunk_rows})")
        if problems:
            raise ValueError("invalid k-means config: " + "; ".join(problems))


@dataclass
class HierarchicalKMeans:
    """A fitted tree: ``centroids[l]`` is (branching**l, branching, D) float32 on the CPU."""

    centroids: list[torch.Tensor]
    inertia: list[float]
    """Per level: sum over features of the squared distance to the centroid chosen at that level."""
    iterations: list[int]
    """Lloyd iterations run per level."""
    feature_count: int
    config: KMeansConfig
    seconds: float = 0.0
    repairs: list[int] = field(default_factory=list)
    """Empty clusters repaired per level."""

    @property
    def feature_dim(self) -> int:
        return int(self.centroids[0].shape[-1])


# ---------------------------------------------------------------------------------------------
# Streaming features


class FeatureSource:
    """Features (N, D) read in chunks: a .npy file opened as a memory map, or an array in memory."""

    def __init__(
        self, features: "str | Path | np.ndarray | torch.Tensor", device: torch.device, chunk_rows: int | None
    ):
        if isinstance(features, (str, Path)):
            path = Path(features)
            if not path.is_file():
                raise MissingFileError(f"feature file {path} does not exist")
            features = np.load(path, mmap_mode="r", allow_pickle=False)
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"features must be a non-empty (N, D) array, got shape {tuple(features.shape)}")
        self.array = features
        self.device = device
        self.n, self.dim = int(features.shape[0]), int(features.shape[1])
        chunk_bytes = (256 << 20) if device.type == "cuda" else (4 << 20)
        self.chunk_rows = chunk_rows or max(256, chunk_bytes // (4 * self.dim))

    def _to_device(self, block) -> torch.Tensor:
        if isinstance(block, torch.Tensor):
            return block.to(self.device, torch.float32)
        return torch.from_numpy(np.array(block, dtype=np.float32)).to(self.device)  # a copy: memmaps are read-only

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(lo, hi, features[lo:hi])`` as float32 on the device, in order, ``rows`` at a time
        (default ``chunk_rows``)."""
        rows = rows or self.chunk_rows
        for lo in range(0, self.n, rows):
            hi = min(self.n, lo + rows)
            yield lo, hi, self._to_device(self.array[lo:hi])

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The features at ``index`` (any order), read in ascending order for the memory map's sake."""
        if index.numel() == 0:
            return torch.empty(0, self.dim, device=self.device)
        index = index.cpu()
        order = torch.argsort(index)
        wanted = index[order]
        if isinstance(self.array, torch.Tensor):
            picked = self.array[wanted]
        else:
            picked = self.array[wanted.numpy()]
        out = torch.empty(len(index), self.dim, device=self.device)
        out[order.to(self.device)] = self._to_device(picked)
        return out


# ---------------------------------------------------------------------------------------------
# Fitting


def fit_hierarchical_kmeans(
    features: "str | Path | np.ndarray | torch.Tensor",
    config: KMeansConfig | None = None,
    *,
    progress: bool = False,
    **overrides,
) -> HierarchicalKMeans:
    """Fit the tree on ``features`` (a .npy path, opened memory-mapped, or an (N, D) array).

    ``overrides`` set ``KMeansConfig`` fields, e.g. ``fit_hierarchical_kmeans(path, depth=2,
    branching=8, seed=1)``.
    """
    config = dataclasses.replace(config or KMeansConfig(), **overrides)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = FeatureSource(features, device, config.chunk_rows)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    groups = torch.zeros(source.n, dtype=torch.long, device=device)
    parents: torch.Tensor | None = None
    result = HierarchicalKMeans(centroids=[], inertia=[], iterations=[], feature_count=source.n, config=config)
    levels = tqdm(range(config.depth), desc="k-means levels", unit="level", disable=not progress)
    for level in levels:
        fitted = _fit_level(source, groups, config.branching**level, parents, config, generator)
        groups = fitted.labels
        parents = fitted.centroids.reshape(-1, source.dim)
        result.centroids.append(fitted.centroids.cpu())
        result.inertia.append(fitted.inertia)
        result.iterations.append(fitted.iterations)
        result.repairs.append(fitted.repairs)
        levels.set_postfix(inertia=f"{fitted.inertia:.4g}", iters=fitted.iterations)
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class _Level:
    centroids: torch.Tensor  # (G, k, D)
    labels: torch.Tensor  # (N,) leaf id within this level: group * k + j
    inertia: float
    iterations: int
    repairs: int


@dataclass
class _PassStats:
    offsets: torch.Tensor  # (G*k, D) sum of (member - centroid) per cluster
    counts: torch.Tensor  # (G*k,) int64
    inertia: float
    labels: torch.Tensor  # (N,) int64
    far_dist: torch.Tensor  # (G*k,) largest squared distance of a member, -1 when empty
    far_row: torch.Tensor  # (G*k,) the row holding it


def _fit_level(source, groups, n_groups, parents, config, generator) -> _Level:
    """Seed and refine the ``branching`` centroids of every node of one level together."""
    k = config.branching
    centroids = _seed_level(source, groups, n_groups, parents, config, generator)
    previous, repairs = math.inf, 0
    for iteration in range(1, config.max_iter + 1):
        stats = _lloyd_pass(source, groups, centroids)
        settled = previous < math.inf and previous - stats.inertia <= config.tol * previous
        if settled or stats.inertia == 0.0 or iteration == config.max_iter:
            break
        previous = stats.inertia
        centroids, fixed = _update_centroids(source, centroids, stats, k)
        repairs += fixed
    return _Level(centroids, stats.labels, stats.inertia, iteration, repairs)


def _lloyd_pass(source: FeatureSource, groups: torch.Tensor, centroids: torch.Tensor) -> _PassStats:
    """One streamed assignment pass: labels, per-centroid offset sums and counts, farthest members."""
    n_clusters = centroids.shape[0] * centroids.shape[1]
    device = centroids.device
    flat_centroids = centroids.reshape(n_clusters, -1)
    # Offsets from the centroid are small, so float32 sums of them stay precise on the CPU (whose
    # index_add_ adds in a fixed order); CUDA adds with atomics in a varying order, and float64
    # keeps that from changing any bit of the float32 centroids in practice.
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    stats = _PassStats(
        offsets=torch.zeros(n_clusters, source.dim, dtype=dtype, device=device),
        counts=torch.zeros(n_clusters, dtype=torch.long, device=device),
        inertia=0.0,
        labels=torch.empty(source.n, dtype=torch.long, device=device),
        far_dist=torch.full((n_clusters,), -1.0, device=device),
        far_row=torch.full((n_clusters,), -1, dtype=torch.long, device=device),
    )
    inertia = torch.zeros((), dtype=torch.float64, device=device)
    # Deep levels have many nodes: a chunk must hold several features per node for the grouped
    # assignment to batch well, whatever the feature width.
    for lo, hi, x in source.chunks(max(source.chunk_rows, 8 * centroids.shape[0])):
        index, sqdist = kmeans_assign(x, groups[lo:hi], centroids)
        flat = groups[lo:hi] * centroids.shape[1] + index
        stats.offsets.index_add_(0, flat, (x - flat_centroids.index_select(0, flat)).to(dtype))
        stats.counts += torch.bincount(flat, minlength=n_clusters)
        inertia += sqdist.sum(dtype=torch.float64)
        _track_farthest(stats, flat, sqdist, lo)
        stats.labels[lo:hi] = flat
    stats.inertia = float(inertia)
    return stats


def _track_farthest(stats: _PassStats, flat: torch.Tensor, sqdist: torch.Tensor, lo: int) -> None:
    """Keep, per cluster, the member farthest from its centroid (the candidate for a repair)."""
    chunk_far = torch.full_like(stats.far_dist, -1.0).scatter_reduce(0, flat, sqdist, "amax")
    rows = torch.arange(lo, lo + len(flat), device=flat.device)
    rows = torch.where(sqdist == chunk_far[flat], rows, -1)
    chunk_row = torch.full_like(stats.far_row, -1).scatter_reduce(0, flat, rows, "amax")
    better = chunk_far > stats.far_dist
    stats.far_dist = torch.where(better, chunk_far, stats.far_dist)
    stats.far_row = torch.where(better, chunk_row, stats.far_row)


def _update_centroids(source: FeatureSource, centroids: torch.Tensor, stats: _PassStats, k: int):
    """Lloyd's update (mean of the members), then repair of empty clusters. Returns (centroids, repairs)."""
    flat = centroids.reshape(-1, source.dim)
    filled = stats.counts > 0
    means = flat + (stats.offsets / stats.counts.clamp_min(1)[:, None]).float()
    flat = torch.where(filled[:, None], means, flat)
    targets, rows = _repair_plan(stats, k)
    if len(targets):
        flat[targets] = source.rows(rows)
    return flat.reshape(centroids.shape), len(targets)


def _repair_plan(stats: _PassStats, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which empty clusters to move and onto which rows (the farthest members of donor clusters).

    Within each node, the r-th empty cluster takes the farthest member of the cluster with the r-th
    largest such distance.
    """
    empty = (stats.counts == 0).view(-1, k)
    if not bool(empty.any()):
        return empty.new_zeros(0, dtype=torch.long), empty.new_zeros(0, dtype=torch.long)
    far = stats.far_dist.view(-1, k)
    # A donor needs two members (one to keep, one to give); a singleton's "farthest" member is the
    # point its centroid sits on, up to rounding.
    score = torch.where((stats.counts.view(-1, k) > 1) & (far > 0), far, -math.inf)
    donors = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = (torch.cumsum(empty.long(), dim=1) - 1).clamp_min(0)
    donor = donors.gather(1, rank)  # (G, k) the donor cluster for each empty one
    usable = empty & torch.isfinite(score.gather(1, donor))
    base = torch.arange(empty.shape[0], device=empty.device)[:, None] * k
    targets = (base + torch.arange(k, device=empty.device))[usable]
    rows = stats.far_row.view(-1, k).gather(1, donor)[usable]
    return targets, rows


# ---------------------------------------------------------------------------------------------
# k-means++ seeding of all nodes of a level at once


def _seed_level(source, groups, n_groups, parents, config, generator) -> torch.Tensor:
    """k-means++ centroids (G, k, D) for every node, from a per-node sample of its features."""
    k = config.branching
    sample, valid = _sample_per_group(source, groups, n_groups, config, generator)
    centres = _greedy_kmeans_pp(sample, valid, k, generator)
    has_points = valid.any(dim=1)
    if parents is not None and not bool(has_points.all()):
        # A node no feature reached keeps its parent's centroid: any later feature that lands
        # there still gets a well-defined (if unused during the fit) leaf.
        fallback = parents[:, None, :].expand(-1, k, -1)
        centres = torch.where(has_points[:, None, None], centres, fallback)
    return centres


def _sample_per_group(source, groups, n_groups, config, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform sample of up to m features per node: (G, m, D) padded, and its (G, m) validity mask."""
    device = groups.device
    counts = torch.bincount(groups, minlength=n_groups)
    budget_rows = max(1, config.init_sample_bytes // (4 * source.dim))
    typical = 2 * -(-source.n // int((counts > 0).sum()))  # twice the mean size of a non-empty node
    # Nodes above m contribute a uniform subsample; m never pads every node to the largest one.
    m = min(config.init_per_cluster * config.branching, max(config.branching, budget_rows // n_groups), typical)
    m = max(1, min(m, int(counts.max())))
    perm = torch.randperm(source.n, generator=generator).to(device)
    order = torch.argsort(groups[perm], stable=True)  # nodes in order, members shuffled
    rows = perm[order]
    sorted_groups = groups[rows]
    rank = torch.arange(source.n, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_groups]
    keep = rank < m
    slots = sorted_groups[keep] * m + rank[keep]
    sample = torch.zeros(n_groups * m, source.dim, device=device).index_copy_(0, slots, source.rows(rows[keep]))
    valid = torch.zeros(n_groups * m, dtype=torch.bool, device=device).index_fill_(0, slots, True)
    return sample.view(n_groups, m, source.dim), valid.view(n_groups, m)


def _greedy_kmeans_pp(sample: torch.Tensor, valid: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ on each node's sample: (G, m, D), zero where the (G, m) mask is False ->
    (G, k, D). Modifies ``sample`` in place.

    Each new centre is the best (lowest resulting potential) of ``2 + log k`` candidates drawn with
    probability proportional to the squared distance to the nearest centre so far.
    """
    n_groups, _, dim = sample.shape
    trials = 2 + int(math.log(k))
    # Work relative to each node's sample mean: distances stay precise however far the node sits
    # from the origin.
    mean = sample.sum(1) / valid.sum(1).clamp_min(1)[:, None]  # (G, D)
    sample = sample.sub_(mean[:, None, :]).mul_(valid[:, :, None])
    sq_norm = (sample * sample).sum(-1)  # (G, m)
    weights = valid.double()
    centres = torch.empty(n_groups, k, dim, device=sample.device)
    first = _draw(weights, 1, generator)  # (G, 1)
    centres[:, 0] = _take(sample, first)[:, 0]
    nearest = _sqdist_to(sample, sq_norm, centres[:, :1])[:, 0] * valid  # (G, m)
    for step in range(1, k):
        candidates = _draw(nearest.double(), trials, generator, fallback=weights)  # (G, L)
        cand_x = _take(sample, candidates)  # (G, L, D)
        cand_d = _sqdist_to(sample, sq_norm, cand_x)  # (G, L, m)
        potential = (torch.minimum(nearest[:, None, :], cand_d) * valid[:, None, :]).sum(-1)
        best = potential.argmin(dim=1)  # (G,)
        pick = torch.arange(n_groups, device=sample.device)
        centres[:, step] = cand_x[pick, best]
        nearest = torch.minimum(nearest, cand_d[pick, best]) * valid
    return centres + mean[:, None, :]


def _draw(
    weights: torch.Tensor, n: int, generator: torch.Generator, fallback: torch.Tensor | None = None
) -> torch.Tensor:
    """``n`` indices per row, drawn with probability proportional to ``weights`` (on the CPU
    generator, so the draw does not depend on the device). Rows whose weights are all zero draw
    from ``fallback`` (or uniformly)."""
    weights = weights.cpu()
    dead = weights.sum(dim=1) <= 0
    if bool(dead.any()):
        spare = fallback.cpu() if fallback is not None else torch.ones_like(weights)
        spare = torch.where(spare.sum(dim=1, keepdim=True) > 0, spare, torch.ones_like(spare))
        weights = torch.where(dead[:, None], spare, weights)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _take(sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``sample[g, index[g, i]]`` for each node g: (G, m, D), (G, L) -> (G, L, D)."""
    index = index.to(sample.device)
    return sample.gather(1, index[:, :, None].expand(-1, -1, sample.shape[2]))


def _sqdist_to(sample: torch.Tensor, sq_norm: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared distances from each node's ``points`` (G, L, D) to its sample (G, m, D): (G, L, m)."""
    dots = torch.bmm(points, sample.transpose(1, 2))
    return (sq_norm[:, None, :] + (points * points).sum(-1)[:, :, None] - 2.0 * dots).clamp_min_(0.0)


def assign_hierarchical(features: torch.Tensor, centroids: list[torch.Tensor]) -> torch.Tensor:
    """Leaf ids (N,) in [0, k**depth): descend the tree, picking the nearest child at each level."""
    groups = None
    for level_centroids in centroids:
        index, _ = kmeans_assign(features, groups, level_centroids)
        groups = index if groups is None else groups * level_centroids.shape[1] + index
    return groups

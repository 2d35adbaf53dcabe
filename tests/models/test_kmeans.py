"""Hierarchical k-means: planted clusters, consistency with a flat search, determinism, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videobert.models.visual.kmeans import (
    FeatureSource, KMeansConfig, _lloyd_pass, _update_centroids, assign_hierarchical, fit_hierarchical_kmeans,
)


def planted_hierarchy(n, dim, branching, depth, *, seed=0, spread=10.0, shrink=8.0, offset=0.0):
    """Features drawn around a planted tree of centres: each level's children sit ``spread / shrink**l``
    around their parent, and points scatter around their leaf. Returns (features, planted leaf ids)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.full((1, dim), offset)
    scale = spread
    for _ in range(depth):
        children = centres[:, None, :] + torch.randn(len(centres), branching, dim, generator=gen) * scale
        centres = children.reshape(-1, dim)
        scale /= shrink
    leaf = torch.randint(0, len(centres), (n,), generator=gen)
    return centres[leaf] + torch.randn(n, dim, generator=gen) * scale, leaf


def purity(found: torch.Tensor, planted: torch.Tensor) -> float:
    """Fraction of points whose found cluster's majority planted label is their own."""
    hits = 0
    for cluster in torch.unique(found):
        hits += int(torch.bincount(planted[found == cluster]).max())
    return hits / len(found)


def test_flat_kmeans_recovers_planted_clusters():
    x, planted = planted_hierarchy(3000, 16, 10, 1, seed=1)
    fit = fit_hierarchical_kmeans(x, depth=1, branching=10, seed=0)
    found = assign_hierarchical(x, fit.centroids)
    assert purity(found, planted) > 0.99
    assert len(torch.unique(found)) == 10


def test_hierarchical_ids_agree_with_flat_nearest_leaf_search():
    x, planted = planted_hierarchy(6000, 12, 4, 3, seed=2)
    fit = fit_hierarchical_kmeans(x, depth=3, branching=4, seed=0)
    ids = assign_hierarchical(x, fit.centroids)
    leaves = fit.centroids[-1].reshape(-1, 12)
    flat = torch.cdist(x.double(), leaves.double()).argmin(dim=1)
    assert (ids == flat).float().mean() > 0.995
    assert purity(ids, planted) > 0.98
    assert ids.min() >= 0 and ids.max() < 4**3


def test_inertia_is_the_distance_to_the_chosen_centroids():
    x, _ = planted_hierarchy(2000, 8, 3, 2, seed=3)
    fit = fit_hierarchical_kmeans(x, depth=2, branching=3, seed=0)
    ids = assign_hierarchical(x, fit.centroids)
    leaf_inertia = ((x - fit.centroids[-1].reshape(-1, 8)[ids]) ** 2).sum().item()
    assert leaf_inertia == pytest.approx(fit.inertia[-1], rel=1e-4)
    assert fit.inertia[0] > fit.inertia[1] > 0
    assert fit.feature_count == 2000 and fit.feature_dim == 8


def test_at_least_as_good_as_scikit_learn_on_flat_data():
    from sklearn.cluster import KMeans

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1500, 6, generator=gen) * torch.linspace(0.5, 3.0, 6)  # no planted clusters
    ours = fit_hierarchical_kmeans(x, depth=1, branching=8, seed=0, tol=1e-6, max_iter=100)
    theirs = KMeans(8, n_init=1, random_state=0).fit(x.numpy())
    assert ours.inertia[0] <= 1.02 * theirs.inertia_


def test_same_seed_same_tree_other_seed_other_tree():
    x, _ = planted_hierarchy(1500, 6, 3, 2, seed=5, shrink=2.0)
    a = fit_hierarchical_kmeans(x, depth=2, branching=3, seed=7)
    b = fit_hierarchical_kmeans(x, depth=2, branching=3, seed=7)
    c = fit_hierarchical_kmeans(x, depth=2, branching=3, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.centroids, b.centroids))
    assert not all(torch.equal(p, q) for p, q in zip(a.centroids, c.centroids))


def test_streams_from_a_memory_mapped_file(tmp_path):
    x, _ = planted_hierarchy(1200, 8, 4, 2, seed=6)
    path = tmp_path / "features.npy"
    np.save(path, x.numpy())
    source = FeatureSource(path, torch.device("cpu"), chunk_rows=250)
    assert isinstance(source.array, np.memmap)  # never loaded whole
    assert [hi - lo for lo, hi, _ in source.chunks()] == [250, 250, 250, 250, 200]
    from_file = fit_hierarchical_kmeans(path, depth=2, branching=4, seed=0, chunk_rows=250)
    in_memory = fit_hierarchical_kmeans(x, depth=2, branching=4, seed=0)
    ids_file = assign_hierarchical(x, from_file.centroids)
    ids_memory = assign_hierarchical(x, in_memory.centroids)
    assert torch.equal(ids_file, ids_memory)
    for p, q in zip(from_file.centroids, in_memory.centroids):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_empty_cluster_moves_onto_the_farthest_member():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.2], [10.0, 0.0], [10.0, 0.2], [10.0, 5.0]])
    source = FeatureSource(x, torch.device("cpu"), chunk_rows=2)
    centroids = torch.tensor([[[0.0, 0.1], [10.0, 0.1], [-50.0, -50.0]]])  # the third gets nothing
    stats = _lloyd_pass(source, torch.zeros(5, dtype=torch.long), centroids)
    assert stats.counts.tolist() == [2, 3, 0]
    updated, repairs = _update_centroids(source, centroids, stats, k=3)
    assert repairs == 1
    assert updated[0, 2].tolist() == [10.0, 5.0]
    torch.testing.assert_close(updated[0, 1], x[2:].mean(0))


def test_nodes_with_fewer_features_than_branches():
    # 5 distinct points, 3 x 3 leaves: some nodes get one point or none; the fit must still give
    # a full, finite tree, and every point must sit exactly on its leaf.
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [9.0, 9.0], [9.0, 9.5], [-7.0, 3.0]])
    fit = fit_hierarchical_kmeans(x, depth=2, branching=3, seed=0)
    assert [tuple(c.shape) for c in fit.centroids] == [(1, 3, 2), (3, 3, 2)]
    assert all(torch.isfinite(c).all() for c in fit.centroids)
    assert fit.inertia[-1] == pytest.approx(0.0, abs=1e-6)
    ids = assign_hierarchical(x, fit.centroids)
    assert len(torch.unique(ids)) == 5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="branching must be >= 2"):
        KMeansConfig(branching=1)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        fit_hierarchical_kmeans(torch.randn(10, 2), depth=0)
    with pytest.raises(ValueError, match="non-empty"):
        fit_hierarchical_kmeans(torch.randn(0, 2), depth=1, branching=2)
    with pytest.raises(FileNotFoundError, match="nowhere.npy"):
        fit_hierarchical_kmeans("nowhere.npy", depth=1, branching=2)

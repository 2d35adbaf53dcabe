"""The fused k-means assignment: Triton kernel (interpreter mode on CPU) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from videobert.models.kernels.kmeans_assign import (
    kmeans_assign, kmeans_assign_reference, kmeans_assign_triton, triton_available,
)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def brute_force(x, groups, centroids):
    """float64 direct differences: the ground truth both implementations are held to."""
    diff = x.double()[:, None, :] - centroids.double()[groups]  # (N, k, D)
    d = (diff * diff).sum(-1)
    best, index = d.min(dim=1)
    second = d.topk(2, dim=1, largest=False).values[:, 1] if d.shape[1] > 1 else best + 1
    return index, best, second - best


def random_case(n, d, g, k, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) + offset
    groups = torch.randint(0, g, (n,), generator=gen)
    centroids = torch.randn(g, k, d, generator=gen) + offset
    return x, groups, centroids


def assert_matches_truth(index, sqdist, x, groups, centroids):
    true_index, true_best, gap = brute_force(x, groups, centroids)
    clear = gap > 1e-3 * (1 + true_best)  # rows with a near-tie may pick either centroid
    assert clear.float().mean() > 0.9
    assert torch.equal(index[clear], true_index[clear])
    torch.testing.assert_close(sqdist.double(), true_best, rtol=1e-4, atol=1e-3)


# Awkward sizes: N not a multiple of the block, D not a power of two, D above one block of 128.
SIZES = [(333, 37, 5, 7), (130, 200, 3, 4), (65, 3, 1, 12), (1, 64, 2, 3)]


@pytest.mark.parametrize("n,d,g,k", SIZES)
def test_reference_matches_brute_force(n, d, g, k):
    x, groups, centroids = random_case(n, d, g, k)
    index, sqdist = kmeans_assign_reference(x, groups, centroids)
    assert index.dtype == torch.long and sqdist.dtype == torch.float32
    assert_matches_truth(index, sqdist, x, groups, centroids)


@needs_triton
@pytest.mark.parametrize("n,d,g,k", SIZES)
def test_kernel_matches_reference(n, d, g, k):
    x, groups, centroids = random_case(n, d, g, k, seed=1)
    index, sqdist = kmeans_assign_triton(x, groups, centroids)
    ref_index, ref_sqdist = kmeans_assign_reference(x, groups, centroids)
    _, _, gap = brute_force(x, groups, centroids)
    clear = gap > 1e-3
    assert torch.equal(index[clear], ref_index[clear])
    torch.testing.assert_close(sqdist, ref_sqdist, rtol=1e-4, atol=1e-4)
    assert_matches_truth(index, sqdist, x, groups, centroids)


def test_reference_stays_precise_far_from_the_origin():
    # Deep tree levels: tight clusters around a point far from zero. The naive ||x||^2 - 2x.c +
    # ||c||^2 expansion would drown these distances in rounding error.
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 1, 48, generator=gen) * 50.0
    centroids = base + torch.randn(4, 6, 48, generator=gen) * 0.05
    groups = torch.randint(0, 4, (500,), generator=gen)
    x = centroids[groups, torch.randint(0, 6, (500,), generator=gen)] + torch.randn(500, 48, generator=gen) * 0.01
    index, sqdist = kmeans_assign_reference(x, groups, centroids)
    assert_matches_truth(index, sqdist, x, groups, centroids)


def test_flat_assignment_and_dispatch_on_cpu():
    x, _, centroids = random_case(257, 19, 1, 9, seed=4)
    index, sqdist = kmeans_assign(x, None, centroids)
    ref = kmeans_assign_reference(x, torch.zeros(257, dtype=torch.long), centroids)
    assert torch.equal(index, ref[0]) and torch.equal(sqdist, ref[1])
    assert_matches_truth(index, sqdist, x, torch.zeros(257, dtype=torch.long), centroids)


def test_duplicate_centroids_pick_the_lowest_index():
    # Duplicates give bit-identical distances; both implementations must then keep the first.
    centroids = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    x = torch.tensor([[1.0, 0.0], [0.1, 0.9]])
    assert kmeans_assign_reference(x, None, centroids)[0].tolist() == [1, 0]
    if triton_available():
        assert kmeans_assign_triton(x, None, centroids)[0].tolist() == [1, 0]


def test_bad_arguments_are_refused():
    x, groups, centroids = random_case(10, 4, 3, 2)
    with pytest.raises(ValueError, match="groups is required"):
        kmeans_assign(x, None, centroids)
    with pytest.raises(ValueError, match=r"groups must lie in \[0, 3\)"):
        kmeans_assign(x, groups + 3, centroids)
    with pytest.raises(ValueError, match="centroids must be"):
        kmeans_assign(x, groups, centroids[:, :, :3])
    with pytest.raises(ValueError, match="unknown backend"):
        kmeans_assign(x, groups, centroids, backend="fast")


def test_no_rows():
    index, sqdist = kmeans_assign(torch.empty(0, 5), torch.empty(0, dtype=torch.long), torch.randn(2, 3, 5))
    assert index.shape == (0,) and sqdist.shape == (0,)


@pytest.mark.gpu
def test_kernel_on_cuda_matches_reference():
    x, groups, centroids = random_case(10_007, 1024, 144, 12, seed=5)
    index, sqdist = kmeans_assign(x.cuda(), groups.cuda(), centroids.cuda())
    ref_index, ref_sqdist = kmeans_assign_reference(x, groups, centroids)
    same = (index.cpu() == ref_index).float().mean()
    assert same > 0.999
    torch.testing.assert_close(sqdist.cpu(), ref_sqdist, rtol=1e-4, atol=1e-2)

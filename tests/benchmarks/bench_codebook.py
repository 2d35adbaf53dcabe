"""Benchmark: fitting the hierarchical codebook, ours against scikit-learn level by level.

Both fit the same tree (depth x branching) on the same features, in one run:

- ours: ``fit_hierarchical_kmeans`` streaming the features from a .npy file on disk, all nodes of a
  level fitted together;
- baseline: scikit-learn's ``MiniBatchKMeans`` applied level by level, one model per node, as
  public VideoBERT reimplementations do (a node with fewer features than branches keeps each feature
  as a centroid).

Printed: seconds and final inertia (sum of squared distances of each feature to its leaf centroid)
for both, and the ratios. Goal: at least 5x faster on CPU at equal or lower inertia. Then the
assignment throughput (features/s of a full descent to the leaves) of the PyTorch reference path,
and of the Triton kernel when a CUDA device is present.

    python tests/benchmarks/bench_codebook.py                    # 100k x 64, 4 x 12
    python tests/benchmarks/bench_codebook.py --n 20000 --threads 1
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

Seconds = tuple[float, float]
"""(wall-clock, CPU) seconds: CPU time is the fairer figure on a machine shared with other work."""


def planted_hierarchy(n: int, dim: int, branching: int, depth: int, seed: int) -> np.ndarray:
    """Features around a random tree of centres (children spread a quarter of their parent's spread,
    noise at the leaves as wide as the last level), so the levels overlap as real features do."""
    gen = torch.Generator().manual_seed(seed)
    centres, scale = torch.zeros(1, dim), 1.0
    for _ in range(depth):
        children = centres[:, None, :] + torch.randn(len(centres), branching, dim, generator=gen) * scale
        centres = children.reshape(-1, dim)
        scale /= 4.0
    leaf = torch.randint(0, len(centres), (n,), generator=gen)
    return (centres[leaf] + torch.randn(n, dim, generator=gen) * scale * 4.0).numpy()


def fit_ours(path: Path, depth: int, branching: int, seed: int) -> tuple[Seconds, np.ndarray, np.ndarray]:
    """((wall, CPU) seconds, leaf centroids, leaf id per feature)."""
    from videobert.models.visual.kmeans import assign_hierarchical, fit_hierarchical_kmeans

    started = time.perf_counter(), time.process_time()
    fit = fit_hierarchical_kmeans(path, depth=depth, branching=branching, seed=seed, device="cpu")
    seconds = time.perf_counter() - started[0], time.process_time() - started[1]
    features = torch.from_numpy(np.load(path))
    ids = assign_hierarchical(features, fit.centroids)
    return seconds, fit.centroids[-1].reshape(-1, features.shape[1]).numpy(), ids.numpy()


def fit_sklearn(features: np.ndarray, depth: int, branching: int, seed: int) -> tuple[Seconds, np.ndarray, np.ndarray]:
    """The per-node baseline: ((wall, CPU) seconds, leaf centroids, leaf id per feature)."""
    from sklearn.cluster import MiniBatchKMeans

    started = time.perf_counter(), time.process_time()
    labels = np.zeros(len(features), dtype=np.int64)
    for level in range(depth):
        centroids = np.zeros((branching**level, branching, features.shape[1]), dtype=np.float32)
        children = np.zeros_like(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(branching**level + 1))
        for node in range(branching**level):
            members = order[bounds[node]: bounds[node + 1]]
            if len(members) == 0:
                continue
            if len(members) < branching:
                centroids[node, : len(members)] = features[members]
                centroids[node, len(members):] = features[members[0]]
                children[members] = node * branching + np.arange(len(members))
                continue
            model = MiniBatchKMeans(n_clusters=branching, random_state=seed, n_init="auto").fit(features[members])
            centroids[node] = model.cluster_centers_
            children[members] = node * branching + model.labels_
        labels = children
    seconds = time.perf_counter() - started[0], time.process_time() - started[1]
    return seconds, centroids.reshape(-1, features.shape[1]), labels


def inertia(features: np.ndarray, leaves: np.ndarray, ids: np.ndarray) -> float:
    diff = features.astype(np.float64) - leaves[ids].astype(np.float64)
    return float((diff * diff).sum())


def assignment_throughput(features: np.ndarray, depth: int, branching: int, device: str, backend: str) -> float:
    """Features per second of a full descent through a random tree of the given shape."""
    from videobert.models.kernels.kmeans_assign import kmeans_assign

    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(features).to(device)
    tree = [torch.randn(branching**level, branching, x.shape[1], generator=gen).to(device) for level in range(depth)]

    def descend() -> None:
        groups = torch.zeros(len(x), dtype=torch.long, device=device)
        for centroids in tree:
            index, _ = kmeans_assign(x, groups, centroids, backend=backend)
            groups = groups * branching + index

    descend()  # warm-up (Triton compiles here)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        descend()
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * len(x) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="features")
    parser.add_argument("--dim", type=int, default=64, help="feature dimension")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--branching", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    features = planted_hierarchy(args.n, args.dim, args.branching, args.depth, args.seed)
    print(f"features: {args.n} x {args.dim}, tree {args.depth} x {args.branching} = "
          f"{args.branching ** args.depth} leaves, {args.threads} CPU thread(s)")
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        path = Path(tmp) / "features.npy"
        np.save(path, features)
        ours_s, ours_leaves, ours_ids = fit_ours(path, args.depth, args.branching, args.seed)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base_s, base_leaves, base_ids = fit_sklearn(features, args.depth, args.branching, args.seed)
    ours_inertia = inertia(features, ours_leaves, ours_ids)
    base_inertia = inertia(features, base_leaves, base_ids)
    print(f"{'':30s}{'wall s':>9s}{'CPU s':>9s}{'inertia':>14s}")
    print(f"{'ours (all nodes at once)':30s}{ours_s[0]:9.2f}{ours_s[1]:9.2f}{ours_inertia:14.6g}")
    print(f"{'sklearn MiniBatchKMeans/node':30s}{base_s[0]:9.2f}{base_s[1]:9.2f}{base_inertia:14.6g}")
    print(f"speed-up {base_s[0] / ours_s[0]:.1f}x wall, {base_s[1] / ours_s[1]:.1f}x CPU time (goal >= 5x); "
          f"inertia ratio ours/sklearn {ours_inertia / base_inertia:.3f} (goal <= 1); "
          f"peak RSS after our fit {peak_mib:.0f} MiB")

    rate = assignment_throughput(features, args.depth, args.branching, "cpu", "reference")
    print(f"assignment, reference path (cpu): {rate:,.0f} features/s")
    if torch.cuda.is_available():
        for backend in ("reference", "triton"):
            rate = assignment_throughput(features, args.depth, args.branching, "cuda", backend)
            print(f"assignment, {backend} on cuda: {rate:,.0f} features/s")


if __name__ == "__main__":
    main()

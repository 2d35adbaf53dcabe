"""The built-in clip encoder for the synthetic corpus: hand-made colour, shape and motion features.

This is not a semantic encoder and has learned nothing: it measures what the built-in synthetic
corpus (``videobert shards synth``) varies, one coloured object moving over a muted, textured
backdrop, so that the whole pipeline runs without downloading weights. On real video use S3D
(``build_encoder("s3d", weights=...)``); on real video these features mean little.

What it computes for clips (B, T, H, W, 3) uint8, with batched tensor ops and no learned weights:

1. Working frames: frames are reduced to a short side of about ``WORK_SIZE`` (32) pixels.
2. Background: a plane per channel (``a + b x + c y``) fitted by least squares to the frame border
   averaged over the clip's frames (the corpus never lets an object reach the border). The soft
   foreground mask ramps up with the colour distance to that plane; the threshold rises with the
   border's own spread (texture, noise).
3. Colour block (7): the foreground's mean colour (core pixels weigh most), its chromaticity and
   its hue direction (the last two do not change with brightness).
4. Shape block (5), invariant to position, scale and rotation, averaged over the frames weighted by
   foreground area: the magnitudes of the normalised complex central moments of order 2, 3 and 4
   (elongation, three-fold and four-fold symmetry: ovals, triangles, squares), the radius of
   gyration relative to sqrt(area), and the radial kurtosis E r^4 / (E r^2)^2. All moments of a
   frame come from one matrix product of the mask with the monomials x^p y^q (p + q <= 4).
5. Motion block (17), in frame heights and seconds, so comparable across frame rates and sizes:
   on a log scale, centroid speed, net drift, spread and acceleration per axis, the change of the
   area and of the principal extents, and the spin (phase change of the moments); then how
   smoothly the velocity turns, how consistently it circles the mean position, and whether the
   pixel at the centroid is foreground (not when the object is split in two).

Each feature is centred and scaled by fixed constants (``_CENTRE``, ``_SCALE``: the mean and spread
measured on the default corpus's training split) and each block is divided by the square root of
its size, so that plain Euclidean distance (what k-means uses) weighs colour, shape and motion
alike. ``FEATURE_BLOCKS`` names each block's slice; ``FEATURE_DIM`` is 29.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from videobert.models.visual.encoder import ClipEncoder, EncoderSpec, register_encoder

COLOUR_DIM, SHAPE_DIM, MOTION_DIM = 7, 5, 17
FEATURE_BLOCKS: dict[str, slice] = {
    "colour": slice(0, COLOUR_DIM),
    "shape": slice(COLOUR_DIM, COLOUR_DIM + SHAPE_DIM),
    "motion": slice(COLOUR_DIM + SHAPE_DIM, COLOUR_DIM + SHAPE_DIM + MOTION_DIM),
}
FEATURE_DIM = COLOUR_DIM + SHAPE_DIM + MOTION_DIM

WORK_SIZE = 32
"""Short side, in pixels, of the frames the features are measured on: the objects need no more."""
_EPS = 1e-6

# Per-feature centre and scale (raw feature -> (raw - centre) / scale): the mean and standard
# deviation of each raw feature over the clips of the default synthetic corpus's training split
# (seed 0, demo setting); `python tests/benchmarks/bench_synth.py --calibrate` measures them again.
_CENTRE = torch.tensor([
    0.7173, 0.546, 0.161, 0.5084, 0.3729, 0.2419, 0.7852,  # colour
    0.2108, 0.2105, 0.346, 0.4306, 1.445,  # shape
    # motion: rates (log scale)
    1.844, 1.751, 0.7285, 0.4685, 1.529, 1.362, 1.79, 1.746, 1.074, 1.505, 0.9216, 0.9865, 2.007,
    0.3088, 0.2279, 0.8921, 0.7983,  # motion: bounded
])
_SCALE = torch.tensor([
    0.2298, 0.2517, 0.03831, 0.1375, 0.1297, 0.4529, 0.18,  # colour
    0.2133, 0.2919, 0.2541, 0.02944, 0.1007,  # shape
    # motion: rates (log scale)
    1.206, 0.9596, 0.8335, 0.5502, 1.197, 1.01, 1.142, 0.7401, 0.9109, 1.006, 0.6361, 0.9437, 0.9208,
    0.611, 0.3628, 0.2302, 0.3954,  # motion: bounded
])


@register_encoder("synthetic")
class SyntheticEncoder(ClipEncoder):
    """Colour, shape and motion statistics of the foreground object; see the module docstring."""

    def __init__(
        self, fps: float = 10.0, clip_len: int = 15, frame_size: tuple[int, int] | list[int] = (64, 64),
        chunk_pixels: int = 1 << 24,
    ) -> None:
        super().__init__()
        if clip_len < 3:
            raise ValueError(f"synthetic encoder: clip_len {clip_len} is too short for motion features (need >= 3)")
        self.spec = EncoderSpec(
            name="synthetic", fps=float(fps), clip_len=int(clip_len),
            frame_size=(int(frame_size[0]), int(frame_size[1])), feature_dim=FEATURE_DIM,
        )
        # Clips per internal batch: bounded by pixels, so large frames do not exhaust memory.
        height, width = self.spec.frame_size
        self.chunk = max(1, int(chunk_pixels) // (self.spec.clip_len * height * width))
        self.register_buffer("centre", _CENTRE.clone(), persistent=False)
        self.register_buffer("scale", _SCALE.clone(), persistent=False)
        weights = torch.cat([torch.full((b.stop - b.start,), 1 / math.sqrt(b.stop - b.start))
                             for b in FEATURE_BLOCKS.values()])
        self.register_buffer("block_weight", weights, persistent=False)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        # clips: (B, T, H, W, 3) uint8 -> (B, FEATURE_DIM) float32
        if not len(clips):
            return clips.new_zeros((0, FEATURE_DIM), dtype=torch.float32)
        raw = torch.cat([self.raw_features(chunk) for chunk in clips.split(self.chunk)])
        return (raw - self.centre) / self.scale * self.block_weight

    def raw_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Unscaled features (B, FEATURE_DIM) of a batch of uint8 clips (B, T, H, W, 3)."""
        x = _to_work_frames(clips)  # (B, T, 3, h, w) float, 0-255
        mask = foreground_mask(x)  # (B, T, h, w)
        geo = _frame_geometry(mask)
        colour = _colour_block(x, mask)
        shape = _shape_block(geo)
        motion = _motion_block(geo, mask, self.spec.fps)
        return torch.cat([colour, shape, motion], dim=1)


def _to_work_frames(clips: torch.Tensor) -> torch.Tensor:
    """Float frames (B, T, 3, h, w), channel planes, 0-255 units, short side about ``WORK_SIZE``.

    Frames up to three times that size are subsampled (every k-th pixel of frames that were already
    scaled down smoothly: the cheap path, which the throughput depends on); larger ones are area-averaged.
    """
    b, t, h, w, _ = clips.shape
    short = min(h, w)
    if short <= 3 * WORK_SIZE:
        step = max(1, short // WORK_SIZE)
        # Strided uint8 copy first, then a contiguous conversion: cheaper than converting strided data.
        return clips[:, :, ::step, ::step].permute(0, 1, 4, 2, 3).contiguous().float()
    size = (round(h * WORK_SIZE / short), round(w * WORK_SIZE / short))
    x = F.interpolate(clips.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float(), size=size, mode="area")
    return x.reshape(b, t, 3, *size)


def foreground_mask(x: torch.Tensor) -> torch.Tensor:
    """Soft foreground mask (B, T, h, w) in [0, 1] of frames (B, T, 3, h, w) against a fitted backdrop."""
    b, t, _, h, w = x.shape
    grid = _grid(h, w, str(x.device))
    # Mean over time: the corpus keeps objects off the border, and the mean ignores frame order.
    border = x[..., grid.ring].mean(dim=1)  # (B, 3, Nb)
    coef = border @ grid.fit.T  # (B, 3, 3): per channel a + b x + c y, least squares on the border
    spread = (border - coef @ grid.design.T).square().mean(dim=(1, 2)).sqrt()  # (B,)
    a, bx, by = (coef[..., k, None, None] for k in range(3))  # (B, 3, 1, 1) each
    plane = a + bx * grid.xs + by * grid.ys  # (B, 3, h, w)
    distance = (x[:, :, 0] - plane[:, None, 0]).square_()  # (B, T, h, w)
    for c in (1, 2):
        distance += (x[:, :, c] - plane[:, None, c]).square_()
    low = (_THRESHOLD + 2.0 * spread).reshape(b, 1, 1, 1)
    return distance.sqrt_().sub_(low).mul_(1 / _RAMP).clamp_(0, 1)


_THRESHOLD = 25.0
"""Colour distance (0-255 units, plus twice the border's spread) where the foreground starts..."""
_RAMP = 25.0
"""...and how much further it takes to count fully: a soft edge keeps the moments smooth."""


@dataclass(frozen=True)
class _Grid:
    """Constants that depend only on the working frame size, computed once per size."""

    ys: torch.Tensor
    """(h, w) pixel-centre y in frame heights, origin at the frame centre."""
    xs: torch.Tensor
    ring: torch.Tensor
    """(h, w) bool: the border pixels."""
    design: torch.Tensor
    """(Nb, 3): 1, x, y of the border pixels."""
    fit: torch.Tensor
    """(3, Nb): least-squares plane fit (pseudo-inverse of ``design``)."""
    basis: torch.Tensor
    """(h*w, 16): x^p y^q for the moment orders ``_ORDERS`` (one zero column: 16 keeps GEMM fast)."""


_ORDERS = [(p, q) for p in range(5) for q in range(5 - p)]
"""Exponents (p, q) of the raw moments sum(m x^p y^q) the features need (orders 0 to 4)."""


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int, device: str) -> _Grid:
    ys = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) / h
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    width = max(1, round(min(h, w) / 32))
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[width:-width, width:-width] = True
    ring = ~inner
    design = torch.stack([torch.ones_like(xs), xs, ys], dim=-1)[ring]
    monomials = [xs.pow(p) * ys.pow(q) for p, q in _ORDERS] + [torch.zeros_like(xs)]
    basis = torch.stack(monomials, dim=-1).reshape(h * w, -1)
    as_float = dict(dtype=torch.float32, device=device)
    return _Grid(
        ys=ys.to(**as_float), xs=xs.to(**as_float), ring=ring.to(device), design=design.to(**as_float),
        fit=torch.linalg.pinv(design).to(**as_float), basis=basis.to(**as_float),
    )


def _frame_geometry(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame area, centroid and central moments of the mask (B, T, h, w), all (B, T)."""
    b, t, h, w = mask.shape
    basis = _grid(h, w, str(mask.device)).basis
    raw = (mask.reshape(b * t, h * w) @ basis).double().reshape(b, t, -1)  # one matmul for all moments
    mass = raw[..., _ORDERS.index((0, 0))]
    safe = mass + _EPS
    cx = raw[..., _ORDERS.index((1, 0))] / safe
    cy = raw[..., _ORDERS.index((0, 1))] / safe
    mu = _central_moments(raw, safe, cx, cy)  # mu[(p, q)]: mean of dx^p dy^q over the mask
    trace = mu[(2, 0)] + mu[(0, 2)] + _EPS  # mean squared distance from the centroid
    geo = {"mass": mass, "area": mass / (h * h), "cx": cx + w / (2 * h), "cy": cy + 0.5, "trace": trace}
    geo["m2"] = torch.stack([mu[(2, 0)] - mu[(0, 2)], 2 * mu[(1, 1)]], -1) / trace[..., None]
    geo["m3"] = torch.stack([mu[(3, 0)] - 3 * mu[(1, 2)], 3 * mu[(2, 1)] - mu[(0, 3)]], -1) / trace[..., None] ** 1.5
    geo["m4"] = torch.stack([mu[(4, 0)] - 6 * mu[(2, 2)] + mu[(0, 4)], 4 * mu[(3, 1)] - 4 * mu[(1, 3)]], -1) \
        / trace[..., None] ** 2
    geo["kurtosis"] = (mu[(4, 0)] + 2 * mu[(2, 2)] + mu[(0, 4)]) / trace ** 2  # E r^4 / (E r^2)^2
    geo["gyration"] = (trace / (geo["area"] + _EPS)).sqrt()  # scale-free: sqrt(E r^2 / area)
    return {k: v.float() for k, v in geo.items()}


def _central_moments(raw: torch.Tensor, mass: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> dict:
    """Central moments from raw ones by the binomial expansion of (x - cx)^p (y - cy)^q."""
    target, source, ex, ey, coef = _binomial_terms(str(raw.device))
    mean = raw[..., : len(_ORDERS)] / mass[..., None]  # (B, T, orders)
    powers = torch.arange(5, dtype=raw.dtype, device=raw.device)
    px, py = (-cx)[..., None] ** powers, (-cy)[..., None] ** powers  # (B, T, 5)
    terms = coef * px[..., ex] * py[..., ey] * mean[..., source]  # (B, T, terms)
    central = torch.zeros_like(mean).index_add_(-1, target, terms)
    return {pq: central[..., i] for i, pq in enumerate(_ORDERS)}


@functools.lru_cache(maxsize=4)
def _binomial_terms(device: str) -> tuple[torch.Tensor, ...]:
    """For every term of every expansion: target order, source order, powers of -cx and -cy, coefficient."""
    rows = [
        (t, _ORDERS.index((i, j)), p - i, q - j, math.comb(p, i) * math.comb(q, j))
        for t, (p, q) in enumerate(_ORDERS) for i in range(p + 1) for j in range(q + 1)
    ]
    target, source, ex, ey, coef = zip(*rows)
    index = [torch.tensor(v, dtype=torch.long, device=device) for v in (target, source, ex, ey)]
    return (*index, torch.tensor(coef, dtype=torch.float64, device=device))


def _colour_block(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 7): mean RGB of the object (0-1), chromaticity (r, g), hue direction (2)."""
    b, t, _, h, w = x.shape
    core = mask.pow(3)  # (B, T, h, w): edge pixels mix with the backdrop, so the core weighs most
    sums = torch.bmm(x.reshape(b * t, 3, h * w), core.reshape(b * t, h * w, 1)).reshape(b, t, 3).sum(dim=1)
    rgb = sums / (core.sum(dim=(1, 2, 3))[:, None] * 255 + _EPS)  # (B, 3)
    chroma = rgb[:, :2] / (rgb.sum(dim=1, keepdim=True) + _EPS)
    r, g, bl = rgb.unbind(dim=1)
    opponent = torch.stack([(r - g) / math.sqrt(2), (r + g - 2 * bl) / math.sqrt(6)], dim=1)
    hue = opponent / (opponent.norm(dim=1, keepdim=True) + 0.02)
    return torch.cat([rgb, chroma, hue], dim=1)


def _shape_block(geo: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 5): |m2|, |m3|, |m4|, radius of gyration, radial kurtosis; area-weighted over frames."""
    weight = geo["area"] / (geo["area"].sum(dim=1, keepdim=True) + _EPS)  # (B, T)
    per_frame = torch.stack([
        geo["m2"].norm(dim=-1), geo["m3"].norm(dim=-1), geo["m4"].norm(dim=-1),
        geo["gyration"], geo["kurtosis"],
    ], dim=-1)  # (B, T, 5)
    return (per_frame * weight[..., None]).sum(dim=1)


def _motion_block(geo: dict[str, torch.Tensor], mask: torch.Tensor, fps: float) -> torch.Tensor:
    """(B, 17): trajectory, area, extent, spin and split statistics over the clip."""
    centre = torch.stack([geo["cx"], geo["cy"]], dim=-1)  # (B, T, 2)
    velocity = centre.diff(dim=1) * fps  # (B, T-1, 2), frame heights per second
    seconds = (centre.shape[1] - 1) / fps
    rates = torch.cat([
        velocity.abs().mean(dim=1),  # speed per axis
        (centre[:, -1] - centre[:, 0]).abs() / seconds,  # net drift per axis
        centre.std(dim=1),  # spread per axis
        velocity.diff(dim=1).abs().mean(dim=1) * fps,  # acceleration per axis
        _area_change(geo["area"], fps), _extent_change(geo), _spin(geo, fps)[:, None],
    ], dim=1)  # (B, 13), >= 0 and heavy-tailed (a shake is 10x faster than a roll): compare on a log scale
    rates = torch.log1p(rates / _RATE_FLOOR.to(rates.device))
    bounded = [_turning(velocity)[:, None], _circling(centre, velocity)[:, None], _centre_fill(geo, mask)]
    return torch.cat([rates, *bounded], dim=1)


_RATE_FLOOR = torch.tensor([0.02, 0.02, 0.02, 0.02, 0.005, 0.005, 0.2, 0.2, 0.02, 0.1, 0.02, 0.02, 0.2])
"""Per rate: the size below which it hardly differs from none (frame heights, seconds, radians)."""


def _turning(velocity: torch.Tensor) -> torch.Tensor:
    """Speed-weighted cosine between successive velocities: 1 straight, ~0.5 circling, < 0 to and fro."""
    dot = (velocity[:, 1:] * velocity[:, :-1]).sum(dim=-1)
    norms = velocity[:, 1:].norm(dim=-1) * velocity[:, :-1].norm(dim=-1)
    return dot.sum(dim=1) / (norms.sum(dim=1) + _EPS)


def _circling(centre: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """How consistently the motion goes round the mean position (|normalised angular momentum|)."""
    offset = (centre[:, :-1] + centre[:, 1:]) / 2 - centre.mean(dim=1, keepdim=True)
    cross = offset[..., 0] * velocity[..., 1] - offset[..., 1] * velocity[..., 0]
    norms = offset.norm(dim=-1) * velocity.norm(dim=-1)
    return cross.sum(dim=1).abs() / (norms.sum(dim=1) + _EPS)


def _area_change(area: torch.Tensor, fps: float) -> torch.Tensor:
    """(B, 2): relative spread of the area and its mean relative rate of change."""
    mean = area.mean(dim=1) + _EPS
    return torch.stack([area.std(dim=1) / mean, area.diff(dim=1).abs().mean(dim=1) * fps / mean], dim=1)


def _extent_change(geo: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 2): relative temporal spread of the major and minor principal extents."""
    # Principal extents from |m2| and the radius of gyration: lambda_1,2 = g^2 (1 +- |m2|) / 2.
    g2 = geo["trace"]
    ecc = geo["m2"].norm(dim=-1)
    major, minor = (g2 * (1 + ecc) / 2).sqrt(), (g2 * (1 - ecc) / 2).clamp(min=0).sqrt()
    return torch.stack([major.std(dim=1) / (major.mean(dim=1) + _EPS),
                        minor.std(dim=1) / (minor.mean(dim=1) + _EPS)], dim=1)


def _spin(geo: dict[str, torch.Tensor], fps: float) -> torch.Tensor:
    """(B,): rotation speed in radians per second, from the phase change of the order-2..4 moments."""
    total, weight = 0.0, _EPS
    for k in (2, 3, 4):
        m = geo[f"m{k}"]  # (B, T, 2)
        a, b = m[:, :-1], m[:, 1:]
        # Phase of b * conj(a), divided by k: the rotation between frames as seen by this symmetry.
        re = a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]
        im = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
        w = a.norm(dim=-1) * b.norm(dim=-1)
        total = total + (torch.atan2(im, re).abs() / k * w).sum(dim=1)
        weight = weight + w.sum(dim=1)
    return total / weight * fps


def _centre_fill(geo: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """(B, 2): mean and minimum over frames of the mask at the centroid (low when split in two)."""
    b, t, h, w = mask.shape
    row = (geo["cy"] * h).long().clamp(0, h - 1)
    col = (geo["cx"] * h).long().clamp(0, w - 1)
    at_centre = mask.reshape(b, t, h * w).gather(2, (row * w + col)[..., None])[..., 0]  # (B, T)
    return torch.stack([at_centre.mean(dim=1), at_centre.min(dim=1).values], dim=1)

"""What the synthetic corpus shows, and the NumPy renderer that draws it.

A scene is one object (a noun: a shape in a colour) on a per-video background, moved or transformed
by an action (a verb) for the length of a segment. Nouns share colours across shapes and shapes
across colours, so neither colour nor shape alone names the noun. Every verb is a motion whose
statistics stay the same over the segment (periodic with a period of at most ~1.5 s, or a steady
roll), so any 1.5 s window of a segment shows it.

Nuisance per video: background colour, gradient and texture, lighting (brightness and colour cast),
pixel noise; per segment: object position, size, speed/period and phase of the motion, direction.

Drawing is vectorised over the frames of a chunk: each shape is a signed distance function evaluated
on the pixel grid in the object's own (rotated, scaled) coordinates and turned into an anti-aliased
coverage map; no per-pixel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Noun -> (shape, colour). Yellow and brown are shared by several shapes; every shape has two colours.
NOUNS: dict[str, tuple[str, str]] = {
    "tomato": ("circle", "red"),
    "apple": ("circle", "green"),
    "lemon": ("oval", "yellow"),
    "potato": ("oval", "brown"),
    "cheese": ("triangle", "yellow"),
    "carrot": ("triangle", "orange"),
    "butter": ("square", "yellow"),
    "bread": ("square", "brown"),
}

# Verb -> the motion that shows it (see ``motion_track``).
VERBS: dict[str, str] = {
    "stir": "orbit on a circle, turning with it",
    "shake": "fast side-to-side oscillation",
    "roll": "steady roll along the table, turning as it goes",
    "flip": "turns over around a horizontal axis (height goes through zero), with a small hop",
    "lift": "rises and drops back, tilting",
    "slice": "splits into two halves that open and close",
}

# RGB in [0, 1]; saturated, so that every one stands well clear of the muted backgrounds below.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.20, 0.68, 0.16),
    "yellow": (0.96, 0.84, 0.12),
    "brown": (0.52, 0.29, 0.10),
    "orange": (0.98, 0.50, 0.05),
}

BACKGROUNDS: tuple[tuple[float, float, float], ...] = (
    (0.62, 0.64, 0.70),  # blue-grey
    (0.78, 0.76, 0.72),  # warm light grey
    (0.30, 0.32, 0.36),  # slate
    (0.70, 0.72, 0.78),  # pale steel
    (0.42, 0.44, 0.52),  # dusk blue
    (0.86, 0.86, 0.88),  # near white
    (0.22, 0.22, 0.24),  # charcoal
    (0.56, 0.58, 0.60),  # mid grey
)

TEXTURES = ("plain", "stripes", "checker", "blotches")


@dataclass(frozen=True)
class Background:
    """One video's backdrop and lighting."""

    colour: tuple[float, float, float]
    gradient: tuple[float, float]
    """Brightness change across the frame along (x, y), as a fraction."""
    texture: str
    texture_amplitude: float
    texture_frequency: float
    texture_angle: float
    lighting: tuple[float, float, float]
    """Per-channel gain: brightness times a mild colour cast."""
    noise: float
    """Standard deviation of the per-pixel noise, in [0, 1] intensity units."""
    palette: int = 0
    """Index of the entry of ``BACKGROUNDS`` the colour was drawn around."""


@dataclass(frozen=True)
class Action:
    """One segment's object and motion parameters (times in seconds, lengths in frame units)."""

    verb: str
    noun: str
    centre: tuple[float, float]
    """(x, y) rest position of the object's centre."""
    radius: float
    period: float
    phase: float
    amplitude: float
    direction: float
    """Radians: the axis of shaking or splitting, the sense of orbiting/rolling (sign)."""
    angle: float
    """Initial rotation of the object."""


def sample_background(rng: np.random.Generator) -> Background:
    palette = int(rng.integers(len(BACKGROUNDS)))
    base = np.array(BACKGROUNDS[palette])
    base = np.clip(base + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    brightness = rng.uniform(0.85, 1.12)
    cast = 1.0 + rng.uniform(-0.05, 0.05, 3)
    return Background(
        colour=tuple(float(c) for c in base),
        gradient=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        texture=str(TEXTURES[rng.integers(len(TEXTURES))]),
        texture_amplitude=float(rng.uniform(0.015, 0.04)),
        texture_frequency=float(rng.uniform(3.0, 9.0)),
        texture_angle=float(rng.uniform(0, np.pi)),
        lighting=tuple(float(brightness * c) for c in cast),
        noise=float(rng.uniform(0.008, 0.02)),
        palette=palette,
    )


# Per verb: (period range in s, amplitude range). Amplitude means: orbit radius (stir), shake
# half-width, roll speed in frames/s (a roll has no period), flip hop, lift height, all in frame
# units; slice gap in object radii.
VERB_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "stir": ((0.9, 1.4), (0.09, 0.13)),
    "shake": ((0.28, 0.40), (0.06, 0.085)),
    "roll": ((1.0, 1.0), (0.20, 0.30)),
    "flip": ((0.9, 1.3), (0.03, 0.05)),
    "lift": ((1.0, 1.5), (0.14, 0.20)),
    "slice": ((0.9, 1.3), (0.45, 0.75)),
}


def sample_action(rng: np.random.Generator, verb: str, noun: str) -> Action:
    (p_lo, p_hi), (a_lo, a_hi) = VERB_RANGES[verb]
    radius = float(rng.uniform(0.12, 0.165))
    amplitude = float(rng.uniform(a_lo, a_hi))
    reach_x, reach_y = _reach(verb, radius, amplitude)
    margin = 0.06
    cx = rng.uniform(margin + reach_x, 1 - margin - reach_x) if reach_x < 0.5 - margin else 0.5
    cy = rng.uniform(margin + reach_y, 1 - margin - reach_y) if reach_y < 0.5 - margin else 0.5
    if verb == "lift":  # rests low and rises: keep the rest position in the lower part
        cy = rng.uniform(max(0.5, margin + reach_y), 1 - margin - radius * 1.2)
    if verb in ("shake", "slice"):
        direction = float(rng.uniform(-0.35, 0.35))
    else:
        direction = float(rng.choice([-1.0, 1.0]))
    return Action(
        verb=verb, noun=noun, centre=(float(cx), float(cy)), radius=radius,
        period=float(rng.uniform(p_lo, p_hi)), phase=float(rng.uniform(0, 1)),
        amplitude=amplitude, direction=direction, angle=float(rng.uniform(0, 2 * np.pi)),
    )


def _reach(verb: str, radius: float, amplitude: float) -> tuple[float, float]:
    """How far from its rest centre the object's outline can get, along x and y."""
    body = radius * 1.25  # the corners of a square / triangle stick out past the radius
    if verb == "stir":
        return body + amplitude, body + amplitude
    if verb == "shake":
        return body + amplitude, body + amplitude * 0.4
    if verb == "roll":
        return 0.5, body
    if verb == "slice":
        return body + amplitude * radius, body + amplitude * radius * 0.4
    if verb == "flip":
        return body, body + amplitude
    return body, body


@dataclass(frozen=True)
class Track:
    """Per-frame pose of the object, arrays of shape (n,)."""

    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    scale_y: np.ndarray
    """Signed height factor (negative: seen from the back)."""
    gap: np.ndarray
    """Distance between the two halves (frame units); zero when whole."""


def motion_track(action: Action, t: np.ndarray) -> Track:
    """The pose at times ``t`` (seconds since the segment started)."""
    n = len(t)
    phase = 2 * np.pi * (t / action.period + action.phase)
    x = np.full(n, action.centre[0])
    y = np.full(n, action.centre[1])
    angle = np.full(n, action.angle)
    scale_y = np.ones(n)
    gap = np.zeros(n)
    a, verb = action.amplitude, action.verb
    if verb == "stir":
        x = x + a * np.cos(action.direction * phase)
        y = y + a * np.sin(action.direction * phase)
        angle = angle + action.direction * phase
    elif verb == "shake":
        swing = a * np.sin(phase)
        x = x + swing * np.cos(action.direction)
        y = y + swing * np.sin(action.direction)
        angle = angle + 0.15 * np.sin(phase)
    elif verb == "roll":
        x = _bounce_between(action, t)
        angle = angle + (x - action.centre[0]) / action.radius  # rolling without slipping
    elif verb == "flip":
        scale_y = np.cos(phase)
        y = y - a * np.abs(np.sin(phase))
    elif verb == "lift":
        y = y - a * np.abs(np.sin(phase / 2))
        angle = angle + 0.35 * np.sin(phase / 2) * action.direction
    elif verb == "slice":
        gap = a * action.radius * (0.5 - 0.5 * np.cos(phase))
        angle = np.full(n, action.direction)
    return Track(x=x, y=y, angle=angle, scale_y=scale_y, gap=gap)


def _bounce_between(action: Action, t: np.ndarray) -> np.ndarray:
    """Roll back and forth between two limits at constant speed (a triangle wave)."""
    body = action.radius * 1.25
    lo, hi = 0.06 + body, 0.94 - body
    span = hi - lo
    start = (action.centre[0] - lo) + action.phase * 2 * span
    travel = start + action.direction * action.amplitude * t
    folded = np.mod(travel, 2 * span)
    return lo + np.where(folded < span, folded, 2 * span - folded)


def background_image(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 backdrop: colour, gradient and texture (lighting is applied later)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    shade = 1.0 + bg.gradient[0] * (xx - 0.5) * 2 + bg.gradient[1] * (yy - 0.5) * 2
    along = np.cos(bg.texture_angle) * xx + np.sin(bg.texture_angle) * yy
    across = -np.sin(bg.texture_angle) * xx + np.cos(bg.texture_angle) * yy
    f = bg.texture_frequency * 2 * np.pi
    if bg.texture == "stripes":
        pattern = np.sin(f * along)
    elif bg.texture == "checker":
        pattern = np.tanh(3 * np.sin(f * along) * np.sin(f * across))
    elif bg.texture == "blotches":
        offsets = rng.uniform(0, 2 * np.pi, 3)
        pattern = (np.sin(0.7 * f * along + offsets[0]) + np.sin(0.5 * f * across + offsets[1])
                   + np.sin(0.3 * f * (along + across) + offsets[2])) / 2
    else:
        pattern = np.zeros_like(xx)
    image = np.asarray(bg.colour, np.float32) * shade[..., None] + bg.texture_amplitude * pattern[..., None]
    return image.astype(np.float32)


@dataclass(frozen=True)
class Canvas:
    """One video's lit backdrop, and a bank of finished backdrop frames with pixel noise to draw on."""

    backdrop: np.ndarray
    """(S, S, 3) float32: background times lighting, 0-255 units."""
    lighting: np.ndarray
    """(3,) float32: per-channel gain times 255."""
    frames: np.ndarray
    """(K, S, S, 3) uint8: the backdrop with independent noise; each frame starts as one of them
    (much cheaper than fresh noise for every frame, and the eye cannot tell)."""


NOISE_BANK = 24


def make_canvas(bg: Background, size: int, rng: np.random.Generator) -> Canvas:
    lighting = np.asarray(bg.lighting, np.float32) * 255
    backdrop = background_image(bg, size, rng) * lighting
    noise = rng.standard_normal((NOISE_BANK, size, size, 3), dtype=np.float32) * np.float32(bg.noise * 255)
    frames = np.clip(backdrop + noise + 0.5, 0, 255).astype(np.uint8)
    return Canvas(backdrop=backdrop, lighting=lighting, frames=frames)


def render_frames(action: Action, t: np.ndarray, canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """(n, S, S, 3) uint8 RGB frames of ``action`` at times ``t`` (seconds) on ``canvas``."""
    size = canvas.backdrop.shape[0]
    track = motion_track(action, t)
    frames = canvas.frames[rng.integers(NOISE_BANK, size=len(t))]  # (n, S, S, 3), a copy
    ys, xs = _windows(action, track, size)  # (n, k) each: only the object's neighbourhood is drawn
    coverage, shading = _object_coverage(action, track, ys, xs, size)  # (n, k, k) each
    colour = np.asarray(COLOURS[NOUNS[action.noun][1]], np.float32) * canvas.lighting
    at = (np.arange(len(t))[:, None, None], ys[:, :, None], xs[:, None, :])
    patch = frames[at].astype(np.float32)  # (n, k, k, 3); keeps the noise under the object too
    patch += coverage[..., None] * (colour * shading[..., None] - canvas.backdrop[at[1:]])
    patch += 0.5
    frames[at] = np.clip(patch, 0, 255, out=patch).astype(np.uint8)
    return frames


def _windows(action: Action, track: Track, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the pixel rows and columns (n, k) of a square that holds the whole object."""
    reach = action.radius * 1.35 + float(track.gap.max()) / 2 + 3.0 / size
    side = min(size, int(np.ceil(2 * reach * size)) + 2)
    offsets = np.arange(side)

    def first(centre: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((centre - reach) * size).astype(np.int64), 0, size - side)

    return first(track.y)[:, None] + offsets, first(track.x)[:, None] + offsets


def object_coverage(action: Action, t: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) float32 coverage of the object at times ``t`` over the whole frame (no backdrop)."""
    every = np.broadcast_to(np.arange(size), (len(t), size))
    return _object_coverage(action, motion_track(action, t), every, every, size)[0]


def _object_coverage(
    action: Action, track: Track, ys: np.ndarray, xs: np.ndarray, size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage in [0, 1] and a soft shading factor on each frame's window (n, h, w)."""
    dx = ((xs.astype(np.float32) + 0.5) / size)[:, None, :] - track.x.astype(np.float32)[:, None, None]
    dy = ((ys.astype(np.float32) + 0.5) / size)[:, :, None] - track.y.astype(np.float32)[:, None, None]
    cos = np.cos(track.angle).astype(np.float32)[:, None, None]
    sin = np.sin(track.angle).astype(np.float32)[:, None, None]
    u = cos * dx + sin * dy  # object's own axes, frame units; (n, h, w)
    v = -sin * dx + cos * dy
    # A split object: each point belongs to the half on its side of the cut, shifted apart by the gap.
    half_gap = (track.gap.astype(np.float32) / 2)[:, None, None]
    left = u < 0
    u = np.where(left, u + half_gap, u - half_gap)
    beyond_cut = np.where(left, -u, u)  # > 0 where the shifted point is still on its own side
    sy = track.scale_y.astype(np.float32)[:, None, None]
    height = np.maximum(np.abs(sy), 0.04)
    r = np.float32(action.radius)
    su, sv = u / r, v / (r * height)  # shape units: the shape has radius ~1 there
    distance = _shape_distance(NOUNS[action.noun][0], su, sv)
    # To pixels: divide by the gradient's length on screen. The squash stretches the field along
    # v by 1 / height; the outward direction (su, sv) / |(su, sv)| stands in for the true normal.
    norm2 = su * su + sv * sv + np.float32(1e-12)
    stretch = np.sqrt((su * su + sv * sv / (height * height)) / norm2)
    pixels = distance * (r * size) / stretch
    coverage = np.clip(0.5 - pixels, 0.0, 1.0)
    split = half_gap > 0
    coverage = np.where(split, coverage * np.clip(0.5 + beyond_cut * size, 0.0, 1.0), coverage)
    shading = 1.0 - 0.18 * np.clip((u + v) / r, -1.5, 1.5)  # light from the top left
    return coverage.astype(np.float32), shading.astype(np.float32)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii) to a shape of radius ~1 centred at the origin."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "oval":  # semi-axes 1.25 x 0.7; a scaled-circle distance, good enough for edges
        k = np.sqrt((u / 1.25) ** 2 + (v / 0.7) ** 2)
        return (k - 1.0) * 0.7
    if shape == "square":  # half-side 0.85, slightly rounded corners
        qx, qy = np.abs(u) - 0.78, np.abs(v) - 0.78
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0) - 0.07
    if shape == "triangle":
        return _triangle_distance(u, v, 1.2)
    raise ValueError(f"unknown shape {shape!r}")


def _triangle_distance(u: np.ndarray, v: np.ndarray, circumradius: float) -> np.ndarray:
    """Signed distance to an equilateral triangle (exact inside the edges' reach; fine for edges)."""
    # Distance to each of the three edge lines; the triangle is where all three are negative.
    inradius = circumradius / 2
    d = None
    for k in range(3):
        theta = np.pi / 2 + k * 2 * np.pi / 3
        edge = u * np.float32(np.cos(theta)) + v * np.float32(np.sin(theta)) - np.float32(inradius)
        d = edge if d is None else np.maximum(d, edge)
    return d

"""Synthetic "toy world" scenes: textured shapes on textured backgrounds, with exact label maps and captions.

A scene is rendered from one `numpy.random.Generator`, so the same generator state always gives the same
scene. Only numpy and Pillow are used.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond")

# Texture of each class, in CLASSES order. Colours are shared by all classes and drawn per instance.
CLASS_PATTERNS = ("dots", "checker", "hstripes", "solid", "dstripes", "vstripes", "grid", "speckle")

COLOURS = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 50),
    "green": (50, 170, 60),
    "blue": (40, 80, 210),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "white": (245, 245, 245),
}

BACKGROUNDS = ("plain", "striped", "checked", "speckled")

IGNORE_INDEX = 255

MIN_VISIBLE_FRACTION = 0.7


@dataclass
class SceneObject:
    """One object of a scene; `radius` and the centre are in pixels."""

    label: int
    colour: str
    radius: float
    cx: float
    cy: float

    @property
    def name(self):
        return CLASSES[self.label]


@dataclass
class Scene:
    """A rendered scene.

    image: [H, W, 3] uint8 RGB
    label_map: [H, W] uint8, 0 background, k = CLASSES[k-1], IGNORE_INDEX on the 1-pixel band around objects
    objects: bottom to top drawing order
    """

    image: np.ndarray
    label_map: np.ndarray
    objects: list
    background: str


def voc_palette(n=256):
    """Pascal VOC colour map: [n, 3] uint8, entry k is the colour of mask index k."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[k] = (r, g, b)
    return palette


def _rotate(points, angle):
    """points: [P, 2] offsets from the centre -> rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _regular_polygon(n, radius, start):
    t = start + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _star(radius):
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)


def _cross(radius):
    a = 0.34 * radius
    return np.array([(-a, -radius), (a, -radius), (a, -a), (radius, -a), (radius, a), (a, a),
                     (a, radius), (-a, radius), (-a, a), (-radius, a), (-radius, -a), (-a, -a)])


def _heart(radius):
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -(y + 2.5)], axis=1) * radius / 16.5


def _outline(name, radius, rng):
    """Polygon of a class shape, [P, 2] offsets from the centre, with a small random rotation."""
    if name == "square":
        return _rotate(_regular_polygon(4, 1.25 * radius, np.pi / 4), rng.uniform(-0.35, 0.35))
    if name == "triangle":
        return _rotate(_regular_polygon(3, 1.1 * radius, -np.pi / 2) + (0, 0.2 * radius), rng.uniform(-0.3, 0.3))
    if name == "star":
        return _rotate(_star(1.1 * radius), rng.uniform(-0.4, 0.4))
    if name == "cross":
        return _rotate(_cross(radius), rng.uniform(-0.25, 0.25))
    if name == "heart":
        return _rotate(_heart(radius), rng.uniform(-0.25, 0.25))
    if name == "diamond":
        return _rotate(np.array([(0, -1.1), (0.68, 0), (0, 1.1), (-0.68, 0)]) * radius, rng.uniform(-0.15, 0.15))
    raise ValueError(f"no outline for class {name!r}")


def shape_mask(name, size, cx, cy, radius, rng):
    """Binary mask of one shape, drawn without antialiasing: [size, size] bool."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if name in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if name == "ring":
            inner = 0.55 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        points = _outline(name, radius, rng) + (cx, cy)
        draw.polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def _pattern(kind, yy, xx, cx, cy, rng):
    """Two-tone texture of one instance: [H, W] bool (True = second tone)."""
    period = int(rng.integers(3, 6))
    phase = int(rng.integers(0, period))
    if kind == "solid":
        return np.zeros(yy.shape, dtype=bool)
    if kind == "hstripes":
        return (yy + phase) % period < period // 2 + 1 - (period == 3)
    if kind == "vstripes":
        return (xx + phase) % period < period // 2 + 1 - (period == 3)
    if kind == "dstripes":
        return (xx + yy + phase) % (period + 1) < (period + 1) // 2
    if kind == "checker":
        cell = max(2, period - 1)
        return ((yy + phase) // cell + (xx + phase) // cell) % 2 == 1
    if kind == "grid":
        return ((yy - int(cy)) % 4 == 0) | ((xx - int(cx)) % 4 == 0)
    if kind == "dots":
        return ((yy - int(cy)) % 4 < 2) & ((xx - int(cx)) % 4 < 2)
    if kind == "speckle":
        h, w = yy.shape
        blocks = rng.random(((h + 1) // 2, (w + 1) // 2)) < 0.5
        return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:h, :w]
    raise ValueError(f"unknown pattern {kind!r}")


def _second_tone(colour):
    """Contrasting tone of the same hue: darker for bright colours, lighter for dark ones."""
    luma = colour @ np.array([0.299, 0.587, 0.114])
    return colour * 0.5 if luma > 110 else colour + (255 - colour) * 0.55


def _background(kind, size, yy, xx, rng):
    """Textured background: [size, size, 3] float."""
    base = rng.uniform(70, 170) + rng.uniform(-18, 18, size=3)
    tone = base + rng.choice([-1, 1]) * rng.uniform(20, 32)
    if kind == "plain":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "striped":
        period = int(rng.integers(6, 11))
        coord = (yy, xx, xx + yy)[int(rng.integers(0, 3))]
        img = np.where(((coord + rng.integers(0, period)) % period < period // 2)[..., None], tone, base)
    elif kind == "checked":
        cell = int(rng.integers(4, 9))
        img = np.where(((yy // cell + xx // cell) % 2 == 1)[..., None], tone, base)
    elif kind == "speckled":
        img = base + 60 * (rng.random((size, size, 1), dtype=np.float32) - 0.5)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return img.astype(np.float32)


def ignore_band(instances):
    """1-pixel band around every object.

    instances: [H, W] int, 0 background, i > 0 visible instance i
    returns:   [H, W] bool, True where a 3x3 neighbour belongs to another (non-background) instance
    """
    h, w = instances.shape
    padded = np.pad(instances, 1)
    band = np.zeros((h, w), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                band |= (nb > 0) & (nb != instances)
    return band


def _visible_fractions(instances, full_areas):
    counts = np.bincount(instances.ravel(), minlength=len(full_areas) + 1)[1:]
    return counts / np.maximum(full_areas, 1)


def _place_objects(labels, size, rng, radius_range):
    """Draw objects bottom to top, retrying positions so every object keeps most of its area visible.

    Returns (objects, instances [H, W] int) where instance i+1 is objects[i]; objects that cannot be
    placed are dropped, but the first one always fits.
    """
    instances = np.zeros((size, size), dtype=np.int32)
    objects, areas = [], []
    for label in labels:
        for _ in range(30):
            radius = rng.uniform(*radius_range) * size
            lo, hi = radius + 1, size - radius - 2
            cx, cy = rng.uniform(lo, hi, size=2)
            mask = shape_mask(CLASSES[label], size, cx, cy, radius, rng)
            trial = np.where(mask, len(objects) + 1, instances)
            if mask.any() and np.all(_visible_fractions(trial, np.array(areas + [mask.sum()])) >= MIN_VISIBLE_FRACTION):
                instances = trial
                objects.append(SceneObject(int(label), str(rng.choice(list(COLOURS))), radius, cx, cy))
                areas.append(int(mask.sum()))
                break
    return objects, instances


def render_scene(rng, size=64, labels=None):
    """Render one scene.

    rng: numpy Generator (consumed)
    labels: class indices to draw, bottom to top; None draws 1-3 random classes
    returns Scene with image [size, size, 3] uint8 and label_map [size, size] uint8
    """
    if labels is None:
        labels = rng.integers(0, len(CLASSES), size=int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])))
    radius_range = (0.17, 0.3) if len(labels) == 1 else (0.13, 0.24)
    yy, xx = np.indices((size, size))
    background = str(rng.choice(BACKGROUNDS))
    img = _background(background, size, yy, xx, rng)
    objects, instances = _place_objects(labels, size, rng, radius_range)
    label_map = np.zeros((size, size), dtype=np.uint8)
    for i, obj in enumerate(objects, start=1):
        visible = instances == i
        colour = np.array(COLOURS[obj.colour], dtype=np.float64) + rng.uniform(-15, 15, size=3)
        second = _pattern(CLASS_PATTERNS[obj.label], yy, xx, obj.cx, obj.cy, rng)
        img[visible] = np.where(second[visible][:, None], _second_tone(colour), colour)
        label_map[visible] = obj.label + 1
    img += 10 * (rng.random(img.shape, dtype=np.float32) - 0.5)
    label_map[ignore_band(instances)] = IGNORE_INDEX
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(image, label_map, objects, background)

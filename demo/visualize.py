"""Pictures of a zero-shot segmentation: class overlays, label names, legends and group maps (numpy / PIL only)."""
import colorsys
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from segmentation.evaluation.vis import colorize_over
from tools.toy_world import voc_palette

MIN_LABEL_SIDE = 384   # pictures with text are upscaled (nearest) to at least this short side, so labels stay legible
LEGEND_SWATCH = 14


def class_palette(num_classes: int, with_bg: bool) -> np.ndarray:
    """[num_classes, 3] uint8: Pascal VOC colours with background (output 0) black; without background the first
    class still gets VOC colour 1, so a class keeps its colour with or without a background output."""
    colours = voc_palette(num_classes + 1)
    return colours[:num_classes] if with_bg else colours[1:num_classes + 1]


def group_palette(num_groups: int, offset: int = 0) -> np.ndarray:
    """[num_groups, 3] uint8 fixed colours: group g of a stage always gets entry `offset + g` of one golden-ratio
    hue sequence (stages use different offsets, so first-stage and final groups do not share colours)."""
    colours = []
    for k in range(offset, offset + num_groups):
        hue = (k * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if k % 2 == 0 else (0.6, 0.8)
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return np.asarray(colours, dtype=np.uint8).reshape(-1, 3)


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, skip=(), alpha=0.5) -> np.ndarray:
    """image: [H, W, 3] uint8; labels: [H, W] -> [H, W, 3] uint8 with the label colours blended in."""
    return colorize_over(image, labels, palette, skip=skip, alpha=alpha)


def label_png(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """labels: [H, W] (< 256 classes) -> palette ('P') PNG whose pixel values are the class indices."""
    if labels.max(initial=0) > 255:
        raise ValueError(f'a palette PNG holds at most 256 classes, got label {labels.max()}')
    png = Image.fromarray(labels.astype(np.uint8), mode='P')
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[:len(palette)] = palette[:256]
    png.putpalette(flat.ravel().tolist())
    return png


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def upscale_for_text(image: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour upscale of a small picture (and its label map) so that text fits on it."""
    short = min(image.shape[:2])
    factor = int(np.ceil(MIN_LABEL_SIDE / short)) if short < MIN_LABEL_SIDE else 1
    if factor == 1:
        return image, labels
    return image.repeat(factor, 0).repeat(factor, 1), labels.repeat(factor, 0).repeat(factor, 1)


def anchor_points(labels: np.ndarray, values: Sequence[int]) -> dict:
    """label -> (y, x) of its most interior pixel (largest distance to another label), where a name is drawn."""
    points = {}
    for value in values:
        mask = np.pad(labels == value, 1)
        if not mask.any():
            continue
        depth = ndimage.distance_transform_edt(mask)
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        points[value] = (y - 1, x - 1)
    return points


def draw_names(image: np.ndarray, labels: np.ndarray, names: dict, size: int = 16) -> np.ndarray:
    """Write names[label] on each labelled region (white text on a dark box) -> [H, W, 3] uint8."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    face = font(size)
    for value, (y, x) in anchor_points(labels, list(names)).items():
        text = names[value]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        w, h = right - left, bottom - top
        x0 = int(np.clip(x - w / 2, 0, max(image.shape[1] - w - 4, 0)))
        y0 = int(np.clip(y - h / 2, 0, max(image.shape[0] - h - 4, 0)))
        draw.rectangle([x0, y0, x0 + w + 4, y0 + h + 4], fill=(0, 0, 0))
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=(255, 255, 255), font=face)
    return np.asarray(canvas)


def legend(entries: List[Tuple[str, Sequence[int]]], width: int, size: int = 14) -> np.ndarray:
    """entries: (text, RGB colour) -> white panel [h, width, 3] uint8 of colour swatches and texts, flowing left
    to right in rows (drawn under a picture, where viewers put no buttons)."""
    face = font(size)
    row = max(LEGEND_SWATCH, size) + 8
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    items = [(text, colour, LEGEND_SWATCH + 6 + int(measure.textlength(text, font=face)) + 18)
             for text, colour in entries]
    places, x, y = [], 8, 6
    for text, colour, item_width in items:
        if x > 8 and x + item_width > width:
            x, y = 8, y + row
        places.append((text, colour, x, y))
        x += item_width
    panel = Image.new('RGB', (max(width, max((p[2] + w for p, (_, _, w) in zip(places, items)), default=0)),
                              y + row + 4), 'white')
    draw = ImageDraw.Draw(panel)
    for text, colour, x, y in places:
        draw.rectangle([x, y, x + LEGEND_SWATCH, y + LEGEND_SWATCH], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((x + LEGEND_SWATCH + 6, y), text, fill=(0, 0, 0), font=face)
    return np.asarray(panel)


def above(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Two [H, W, 3] pictures stacked on a white background (widths may differ)."""
    width = max(top.shape[1], bottom.shape[1])
    out = np.full((top.shape[0] + bottom.shape[0], width, 3), 255, dtype=np.uint8)
    out[:top.shape[0], :top.shape[1]] = top
    out[top.shape[0]:, :bottom.shape[1]] = bottom
    return out


def labelled_overlay(image, labels, names: Sequence[str], palette, with_bg: bool) -> np.ndarray:
    """Class overlay with each present class named on its region and a legend of the present classes' colours."""
    present = [int(v) for v in np.unique(labels)]
    big_image, big_labels = upscale_for_text(image, labels)
    skip = (0, ) if with_bg else ()
    picture = overlay(big_image, big_labels, palette, skip=skip)
    picture = draw_names(picture, big_labels, {v: names[v] for v in present if not (with_bg and v == 0)})
    entries = [(names[v], palette[v]) for v in present]
    return above(picture, legend(entries, picture.shape[1]))


def group_overlay(image, groups: np.ndarray, num_groups: int, offset: int = 0) -> np.ndarray:
    """groups: [H, W] arg-max group index -> overlay in the fixed group colours."""
    return overlay(image, groups, group_palette(num_groups, offset))


def percent(share: float) -> str:
    return '<1%' if 0 < share < 0.01 else f'{100 * share:.0f}%'


def group_label_picture(image, groups: np.ndarray, group_names: dict, num_groups: int, offset: int = 0):
    """Final groups in their fixed colours, each named by the class it matches best ('g3 dog 0.82'), with a
    legend 'group k: class score' ordered by area."""
    big_image, big_groups = upscale_for_text(image, groups)
    palette = group_palette(num_groups, offset)
    picture = draw_names(overlay(big_image, big_groups, palette), big_groups,
                         {g: f'g{g} {text}' for g, text in group_names.items()}, size=14)
    areas = {g: int((groups == g).sum()) for g in group_names}
    order = sorted(group_names, key=lambda g: -areas[g])
    entries = [(f'group {g}: {group_names[g]} ({percent(areas[g] / groups.size)} of pixels)', palette[g])
               for g in order]
    return above(picture, legend(entries, picture.shape[1]))

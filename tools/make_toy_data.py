"""Write the synthetic toy world used by the tests and the quickstart.

    python tools/make_toy_data.py --out local_data/toy --seed 0

Layout under --out (paths in meta.json are relative to it):
    classes.json, meta.json
    shards/toy-train-{000000..NNNNNN}.tar     <key>.jpg + <key>.txt   image-caption pairs
    imagenet/toy-val-{000000..NNNNNN}.tar     <key>.jpg + <key>.cls   one object per image, class index
    voc/JPEGImages/<id>.jpg, voc/SegmentationClass/<id>.png, voc/ImageSets/Segmentation/{val,tune}.txt

Every sample is drawn from its own generator seeded by (seed, split, index), so the output is byte-identical
for the same arguments and a smaller world is a prefix of a larger one with the same seed.
"""
import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time

import numpy as np
from PIL import Image

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.toy_captions import caption  # noqa: E402
from tools.toy_world import CLASSES, IGNORE_INDEX, render_scene, voc_palette  # noqa: E402

SPLIT_CODES = {"train": 0, "cls": 1, "val": 2, "tune": 3}

OUTPUTS = ("shards", "imagenet", "voc", "classes.json", "meta.json")

MIN_SIZE = 32


class ToyDataError(Exception):
    """Bad arguments or an output folder that must not be overwritten."""


def sample_rng(seed, split, index):
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def jpeg_bytes(image):
    """image: [H, W, 3] uint8 -> JPEG file bytes (quality 95, no chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def mask_png(label_map):
    """label_map: [H, W] uint8 -> palette ('P') PNG image with the VOC colour map."""
    h, w = label_map.shape
    png = Image.frombytes("P", (w, h), np.ascontiguousarray(label_map).tobytes())
    png.putpalette(voc_palette().ravel().tolist())
    return png


class ShardWriter:
    """Writes numbered webdataset tar shards `<prefix>-NNNNNN.tar` with fixed member metadata."""

    def __init__(self, folder, prefix, per_shard):
        self.folder, self.prefix, self.per_shard = folder, prefix, per_shard
        self.tar, self.count, self.shards = None, 0, 0

    def write(self, key, files):
        """files: {extension: bytes}, stored adjacent as <key>.<extension>."""
        if self.count % self.per_shard == 0:
            self.close()
            path = os.path.join(self.folder, f"{self.prefix}-{self.shards:06d}.tar")
            self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
            self.shards += 1
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self):
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def pattern(self):
        return f"{self.prefix}-{{000000..{self.shards - 1:06d}}}.tar"


def write_train(out, seed, size, length, per_shard):
    os.makedirs(os.path.join(out, "shards"))
    writer = ShardWriter(os.path.join(out, "shards"), "toy-train", per_shard)
    for i in range(length):
        rng = sample_rng(seed, "train", i)
        scene = render_scene(rng, size)
        writer.write(f"{i:09d}", {"jpg": jpeg_bytes(scene.image), "txt": caption(scene, size, rng).encode()})
    writer.close()
    return {"path": "shards", "prefix": writer.pattern(), "length": length, "shards": writer.shards}


def write_cls(out, seed, size, length, per_shard):
    os.makedirs(os.path.join(out, "imagenet"))
    writer = ShardWriter(os.path.join(out, "imagenet"), "toy-val", per_shard)
    for i in range(length):
        label = i % len(CLASSES)
        scene = render_scene(sample_rng(seed, "cls", i), size, labels=[label])
        writer.write(f"{i:09d}", {"jpg": jpeg_bytes(scene.image), "cls": str(label).encode()})
    writer.close()
    return {"path": "imagenet", "prefix": writer.pattern(), "length": length, "shards": writer.shards}


def write_seg(out, seed, size, splits):
    """splits: {split name: number of images}; ids are '<split>_NNNNNN', so splits are disjoint."""
    voc = os.path.join(out, "voc")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(voc, sub))
    for split, length in splits.items():
        ids = [f"{split}_{i:06d}" for i in range(length)]
        for i, image_id in enumerate(ids):
            scene = render_scene(sample_rng(seed, split, i), size)
            with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "wb") as f:
                f.write(jpeg_bytes(scene.image))
            mask_png(scene.label_map).save(os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
        with open(os.path.join(voc, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("".join(f"{image_id}\n" for image_id in ids))
    return {"path": "voc", **splits}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _check_args(size, counts):
    if size < MIN_SIZE:
        raise ToyDataError(f"image size must be at least {MIN_SIZE} px, got {size}")
    for name, value in counts.items():
        if value < 1:
            raise ToyDataError(f"{name} must be at least 1, got {value}")


def _prepare_out(out, force):
    """Refuses a non-empty folder unless `force`; with `force` removes only what this tool writes."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ToyDataError(f"output path {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise ToyDataError(f"output folder {out} exists and is not empty; pass --force to overwrite it")
        for name in OUTPUTS:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(out, exist_ok=True)


def existing_world(out, args):
    """meta.json of the world in `out` when it was written with these `args` and is complete, else None."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    complete = all(os.path.exists(os.path.join(out, name)) for name in OUTPUTS)
    return meta if complete and isinstance(meta, dict) and meta.get("args") == args else None


def make_toy_world(out, seed=0, size=64, train_samples=8000, samples_per_shard=1000, cls_samples=400,
                   seg_val=200, seg_tune=100, force=False):
    """Write a toy world under `out` and return its meta.json content as a dict.

    A world written there before with the same arguments is kept as it is (it would be byte-identical).
    Raises ToyDataError for bad arguments or a non-empty `out` without `force`.
    """
    counts = {"train_samples": train_samples, "samples_per_shard": samples_per_shard, "cls_samples": cls_samples,
              "seg_val": seg_val, "seg_tune": seg_tune}
    _check_args(size, counts)
    args = {"seed": seed, "size": size, **counts}
    existing = None if force else existing_world(out, args)
    if existing:
        return existing
    _prepare_out(out, force)
    meta = {
        "args": args,
        "train": write_train(out, seed, size, train_samples, samples_per_shard),
        "val_cls": write_cls(out, seed, size, cls_samples, samples_per_shard),
        "seg": write_seg(out, seed, size, {"val": seg_val, "tune": seg_tune}),
    }
    classes = {"classes": list(CLASSES), "image_size": size, "seed": seed, "ignore_index": IGNORE_INDEX,
               "palette": voc_palette(len(CLASSES) + 1).tolist()}
    _write_json(os.path.join(out, "classes.json"), classes)
    _write_json(os.path.join(out, "meta.json"), meta)
    return meta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Write the synthetic toy world (caption shards, classification shards, VOC-style segmentation).")
    parser.add_argument("--out", default=os.path.join("local_data", "toy"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--train-samples", type=int, default=8000, help="image-caption pairs")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--cls-samples", type=int, default=400, help="single-object classification images")
    parser.add_argument("--seg-val", type=int, default=200, help="segmentation validation images")
    parser.add_argument("--seg-tune", type=int, default=100, help="segmentation images for choosing thresholds")
    parser.add_argument("--force", action="store_true", help="overwrite the outputs of an earlier run in --out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    world_args = {"seed": args.seed, "size": args.size, "train_samples": args.train_samples,
                  "samples_per_shard": args.samples_per_shard, "cls_samples": args.cls_samples,
                  "seg_val": args.seg_val, "seg_tune": args.seg_tune}
    start = time.time()
    kept = not args.force and existing_world(args.out, world_args) is not None
    try:
        meta = make_toy_world(args.out, force=args.force, **world_args)
    except ToyDataError as err:
        raise SystemExit(f"make_toy_data: {err}")
    print(f"toy world in {args.out}: {meta['train']['length']} train pairs ({meta['train']['shards']} shards), "
          f"{meta['val_cls']['length']} classification images, {meta['seg']['val']} val + {meta['seg']['tune']} "
          f"tune segmentation images, {args.size}px, seed {args.seed}, "
          + ("kept: written there before with these arguments" if kept else f"{time.time() - start:.1f}s"))


if __name__ == "__main__":
    main()

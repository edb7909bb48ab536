import filecmp
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import braceexpand
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tools.make_toy_data import ToyDataError, main, make_toy_world, sample_rng
from tools.toy_captions import caption
from tools.toy_world import CLASSES, IGNORE_INDEX, render_scene, voc_palette

SMALL = dict(seed=3, size=64, train_samples=70, samples_per_shard=32, cls_samples=24, seg_val=12, seg_tune=6)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    return out, make_toy_world(out, **SMALL)


def shard_urls(out, entry):
    return [os.path.join(out, entry["path"], name) for name in braceexpand.braceexpand(entry["prefix"])]


def tar_members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def class_words(text):
    return [w for w in re.findall(r"[a-z]+", text) if w in CLASSES]


def read_split(out, split):
    with open(os.path.join(out, "voc", "ImageSets", "Segmentation", f"{split}.txt")) as f:
        return f.read().split()


def test_meta_and_classes_describe_the_files(world):
    out, meta = world
    with open(os.path.join(out, "meta.json")) as f:
        assert json.load(f) == meta
    with open(os.path.join(out, "classes.json")) as f:
        classes = json.load(f)
    assert classes["classes"] == list(CLASSES) and len(set(CLASSES)) == 8
    assert classes["image_size"] == 64 and classes["seed"] == SMALL["seed"]
    assert classes["palette"] == voc_palette(9).tolist()
    assert meta["train"]["prefix"] == "toy-train-{000000..000002}.tar"
    train_urls = shard_urls(out, meta["train"])
    assert sorted(os.listdir(os.path.join(out, "shards"))) == [os.path.basename(u) for u in train_urls]
    assert sum(len(tar_members(u)) for u in train_urls) == 2 * meta["train"]["length"] == 2 * SMALL["train_samples"]
    cls_urls = shard_urls(out, meta["val_cls"])
    assert sum(len(tar_members(u)) for u in cls_urls) == 2 * SMALL["cls_samples"]
    val, tune = read_split(out, "val"), read_split(out, "tune")
    assert (len(val), len(tune)) == (meta["seg"]["val"], meta["seg"]["tune"]) == (SMALL["seg_val"], SMALL["seg_tune"])
    assert not set(val) & set(tune)
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        assert sorted(os.listdir(os.path.join(out, "voc", sub))) == sorted(i + ext for i in val + tune)


def test_shards_are_adjacent_pairs_with_fixed_metadata(world):
    out, meta = world
    for url in shard_urls(out, meta["train"]):
        members = tar_members(url)
        names = [m.name for m, _ in members]
        assert [n.rsplit(".", 1)[1] for n in names] == ["jpg", "txt"] * (len(names) // 2)
        assert all(a.split(".")[0] == b.split(".")[0] for a, b in zip(names[::2], names[1::2]))
        assert {m.mtime for m, _ in members} == {0}
        for member, data in members:
            if member.name.endswith(".jpg"):
                assert data[:2] == b"\xff\xd8"


def test_webdataset_reads_train_and_classification_shards(world):
    out, meta = world
    train = wds.WebDataset(shard_urls(out, meta["train"]), shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
    pairs = list(train)
    assert len(pairs) == SMALL["train_samples"]
    assert all(img.size == (64, 64) and img.mode == "RGB" for img, _ in pairs)
    assert all(class_words(text) for _, text in pairs)
    cls = wds.WebDataset(shard_urls(out, meta["val_cls"]), shardshuffle=False).decode("pil").to_tuple("jpg", "cls")
    labels = [label for _, label in cls]
    assert np.bincount(labels, minlength=8).tolist() == [SMALL["cls_samples"] // 8] * 8


def test_classification_images_hold_their_class_only():
    for i in range(16):
        scene = render_scene(sample_rng(0, "cls", i), 64, labels=[i % 8])
        assert [o.label for o in scene.objects] == [i % 8]
        assert set(np.unique(scene.label_map)) == {0, i % 8 + 1, IGNORE_INDEX}


def test_captions_name_only_present_classes_and_sometimes_a_subset():
    partial, multi = 0, 0
    for i in range(400):
        rng = sample_rng(1, "train", i)
        scene = render_scene(rng, 64)
        words = class_words(caption(scene, 64, rng))
        present = [o.name for o in scene.objects]
        assert words and set(words) <= set(present)
        multi += len(present) > 1
        partial += len(words) < len(present)
    assert multi > 150
    assert 0.04 < partial / 400 < 0.2


def test_masks_are_exact_palette_pngs_with_ignore_band(world):
    out, _ = world
    for split in ("val", "tune"):
        for i, image_id in enumerate(read_split(out, split)):
            png = Image.open(os.path.join(out, "voc", "SegmentationClass", f"{image_id}.png"))
            assert png.mode == "P"
            assert np.array(png.getpalette()[:27]).reshape(9, 3).tolist() == voc_palette(9).tolist()
            mask = np.asarray(png)
            scene = render_scene(sample_rng(SMALL["seed"], split, i), 64)
            np.testing.assert_array_equal(mask, scene.label_map)
            assert set(np.unique(mask)) <= set(range(9)) | {IGNORE_INDEX}
            assert {o.label + 1 for o in scene.objects} <= set(np.unique(mask).tolist())
            assert (mask == IGNORE_INDEX).any()
            padded = np.pad(mask, 1, constant_values=IGNORE_INDEX)
            touches_background = np.zeros(mask.shape, dtype=bool)
            for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
                touches_background |= padded[dy:dy + 64, dx:dx + 64] == 0
            assert not ((mask > 0) & (mask != IGNORE_INDEX) & touches_background).any()
            jpg = np.asarray(Image.open(os.path.join(out, "voc", "JPEGImages", f"{image_id}.jpg")), dtype=np.float64)
            assert np.abs(jpg - scene.image).mean() < 4


def colour_class_accuracy(images, masks, bits=3):
    """Accuracy of guessing an object pixel's class from its quantised colour alone (majority vote per colour)."""
    colours, labels = [], []
    for image, mask in zip(images, masks):
        keep = (mask > 0) & (mask != IGNORE_INDEX)
        q = image[keep].astype(np.int64) >> (8 - bits)
        colours.append((q[:, 0] << (2 * bits)) | (q[:, 1] << bits) | q[:, 2])
        labels.append(mask[keep].astype(np.int64))
    colours, labels = np.concatenate(colours), np.concatenate(labels)
    table = np.zeros((1 << (3 * bits), 9), dtype=np.int64)
    np.add.at(table, (colours, labels), 1)
    return table.max(axis=1).sum() / len(labels)


def test_class_is_not_readable_from_one_pixel_colour():
    scenes = [render_scene(sample_rng(2, "val", i), 64) for i in range(200)]
    masks = [s.label_map for s in scenes]
    palette = voc_palette()
    assert colour_class_accuracy([palette[m] for m in masks], masks) == 1.0
    assert colour_class_accuracy([s.image for s in scenes], masks) < 0.4


def test_same_seed_same_bytes_other_seed_differs(tmp_path, world):
    out, _ = world
    again = str(tmp_path / "again")
    make_toy_world(again, **SMALL)
    cmp = filecmp.dircmp(out, again)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for root, _, files in os.walk(out):
        for name in files:
            first = os.path.join(root, name)
            assert filecmp.cmp(first, os.path.join(again, os.path.relpath(first, out)), shallow=False)
    other = str(tmp_path / "other")
    make_toy_world(other, **{**SMALL, "seed": SMALL["seed"] + 1})
    shard = os.path.join("shards", "toy-train-000000.tar")
    assert not filecmp.cmp(os.path.join(out, shard), os.path.join(other, shard), shallow=False)


def test_refuses_non_empty_folder_without_force(tmp_path, capsys):
    out = tmp_path / "world"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["--out", str(out), "--train-samples", "8", "--samples-per-shard", "4", "--cls-samples", "8",
            "--seg-val", "2", "--seg-tune", "2"]
    with pytest.raises(SystemExit, match="not empty; pass --force"):
        main(args)
    assert os.listdir(out) == ["notes.txt"]
    main(args + ["--force"])
    assert len(os.listdir(out / "shards")) == 2
    main(args[:3] + ["4"] + args[4:] + ["--force"])
    assert os.listdir(out / "shards") == ["toy-train-000000.tar"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert "4 train pairs (1 shards)" in capsys.readouterr().out


def test_same_arguments_keep_the_world_and_other_arguments_are_refused(tmp_path, capsys):
    """The README writes local_data/toy in several places (make quickstart, then make_toy_data.py): a second run
    with the same arguments keeps the world; other arguments still need --force."""
    out = tmp_path / "world"
    args = ["--out", str(out), "--train-samples", "8", "--samples-per-shard", "4", "--cls-samples", "8",
            "--seg-val", "2", "--seg-tune", "2"]
    main(args)
    shard = out / "shards" / "toy-train-000000.tar"
    written = shard.stat().st_mtime_ns
    main(args)
    assert "kept: written there before with these arguments" in capsys.readouterr().out.splitlines()[-1]
    assert shard.stat().st_mtime_ns == written
    (out / "voc").rename(tmp_path / "voc_moved")
    with pytest.raises(SystemExit, match="not empty; pass --force"):
        main(args)
    with pytest.raises(SystemExit, match="not empty; pass --force"):
        main(args[:3] + ["16"] + args[4:])


def test_bad_arguments_give_one_clear_error(tmp_path):
    with pytest.raises(ToyDataError, match="image size must be at least 32"):
        make_toy_world(str(tmp_path / "a"), size=8)
    with pytest.raises(SystemExit, match="seg_val must be at least 1, got 0"):
        main(["--out", str(tmp_path / "b"), "--seg-val", "0"])


def test_script_runs_from_repository_root(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "tools/make_toy_data.py", "--out", str(out), "--train-samples", "4", "--cls-samples", "8",
         "--seg-val", "1", "--seg-tune", "1"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "4 train pairs" in result.stdout
    assert json.loads((out / "meta.json").read_text())["train"]["length"] == 4
    cls_files = {m.name: data for m, data in tar_members(out / "imagenet" / "toy-val-000000.tar")}
    assert cls_files["000000003.cls"] == b"3"
    assert Image.open(io.BytesIO(cls_files["000000003.jpg"])).size == (64, 64)

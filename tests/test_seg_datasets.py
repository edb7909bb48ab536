"""Every benchmark preset reads a small fixture laid out like the real dataset; missing data gives one clear error."""
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segmentation  # noqa: F401
from models.base import GroupView
from segmentation.datasets import SegDataError, encode_rgb_label_ids, imagenet_s_wnids
from segmentation.evaluation import (build_benchmark_dataset, evaluate_background, evaluate_group_oracle,
                                     load_benchmark, prompt_names, select_split)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / 'segmentation/configs/_base_/datasets'
H, W = 20, 30


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def write_mask(path, labels, palette=False):
    """labels: [H, W] uint8, stored as a palette PNG (VOC style) or a plain grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode='L')
    if palette:
        img = img.convert('P')
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def label_map(values):
    """Vertical stripes of the given label values: [H, W]."""
    return np.repeat(np.array(values, np.uint8), W // len(values))[None].repeat(H, 0)


def make_voc(root, ids=('2007_000033', '2007_000042')):
    for i, name in enumerate(ids):
        write_image(root / 'JPEGImages' / f'{name}.jpg', i)
        write_mask(root / 'SegmentationClass' / f'{name}.png', label_map([0, 11, 255]), palette=True)
    split = root / 'ImageSets/Segmentation/val.txt'
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(''.join(f'{n}\n' for n in ids))
    return root


def make_context(root):
    write_image(root / 'JPEGImages/2008_000002.jpg')
    write_mask(root / 'SegmentationClassContext/2008_000002.png', label_map([0, 1, 59]))
    split = root / 'ImageSets/SegmentationContext/val.txt'
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text('2008_000002\n')
    return root


def make_coco(root):
    write_image(root / 'images/val2017/000000000139.jpg')
    write_mask(root / 'annotations/val2017/000000000139_instanceTrainIds.png', label_map([0, 1, 80]))
    write_mask(root / 'annotations/val2017/000000000139_labelTrainIds.png', label_map([0, 170, 255]))
    return root


def make_ade(root):
    write_image(root / 'images/validation/ADE_val_00000001.jpg')
    write_mask(root / 'annotations/validation/ADE_val_00000001.png', label_map([0, 1, 150]))
    return root


def make_cityscapes(root):
    for city in ('frankfurt', 'lindau'):
        stem = f'{city}_000000_000019'
        write_image(root / f'leftImg8bit/val/{city}/{stem}_leftImg8bit.png')
        write_mask(root / f'gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png', label_map([0, 18, 255]))
    return root


def make_imagenet_s(root, version=919, stripes=(0, 300, 1000)):
    """LUSSeg's release layout; the mask is RGB with id = R + 256 * G (1000 ignored)."""
    data_root = root / f'ImageNetS{version}'
    stem = f'{imagenet_s_wnids(version)[0]}/ILSVRC2012_val_00000001'
    write_image(data_root / 'validation' / f'{stem}.JPEG')
    mask = data_root / 'validation-segmentation' / f'{stem}.png'
    mask.parent.mkdir(parents=True, exist_ok=True)
    ids = np.repeat(np.array(stripes), W // len(stripes))[None].repeat(H, 0)
    Image.fromarray(encode_rgb_label_ids(ids)).save(mask)
    return data_root


def make_lvis(root):
    """PGSeg's LVIS layout; 16-bit masks (0 background, 1..1203, 65535 ignored)."""
    write_image(root / 'images/000000000139.jpg')
    (root / 'annotations').mkdir(parents=True)
    ids = np.repeat(np.array([0, 1203, 65535], np.uint16), W // 3)[None].repeat(H, 0)
    Image.fromarray(ids).save(root / 'annotations/000000000139.png')
    (root / 'split').mkdir()
    (root / 'split/val_lvis.txt').write_text('000000000139\n')
    return root


def make_toy(root):
    subprocess.run([sys.executable, str(ROOT / 'tools/make_toy_data.py'), '--out', str(root), '--train-samples', '2',
                    '--samples-per-shard', '2', '--cls-samples', '2', '--seg-val', '3', '--seg-tune', '2'],
                   check=True, capture_output=True)
    return root / 'voc'


# preset, fixture, number of classes, background first, expected labels of the three stripes
CASES = [
    ('pascal_voc12.py', make_voc, 21, True, [0, 11, 255]),
    ('pgseg_pascal_voc12.py', make_voc, 21, True, [0, 11, 255]),
    ('tcl_voc.py', make_voc, 21, True, [0, 11, 255]),
    ('tcl_voc20.py', make_voc, 20, False, [255, 10, 255]),
    ('pascal_context.py', make_context, 60, True, [0, 1, 59]),
    ('pgseg_pascal_context.py', make_context, 60, True, [0, 1, 59]),
    ('tcl_context.py', make_context, 60, True, [0, 1, 59]),
    ('tcl_context59.py', make_context, 59, False, [255, 0, 58]),
    ('coco.py', make_coco, 81, True, [0, 1, 80]),
    ('pgseg_coco.py', make_coco, 81, True, [0, 1, 80]),
    ('tcl_coco_object.py', make_coco, 81, True, [0, 1, 80]),
    ('tcl_coco_stuff.py', make_coco, 171, False, [0, 170, 255]),
    ('tcl_ade20k.py', make_ade, 150, False, [255, 0, 149]),
    ('tcl_cityscapes.py', make_cityscapes, 19, False, [0, 18, 255]),
    ('ovsegmentor_pascal_voc12.py', make_voc, 21, True, [0, 11, 255]),
    ('ovsegmentor_pascal_context.py', make_context, 60, True, [0, 1, 59]),
    ('ovsegmentor_coco.py', make_coco, 81, True, [0, 1, 80]),
    ('ovsegmentor_ade20k.py', make_ade, 150, False, [255, 0, 149]),
    ('segclip_voc.py', make_voc, 21, True, [0, 11, 255]),
    ('segclip_context.py', make_context, 60, True, [0, 1, 59]),
    ('segclip_coco_object.py', make_coco, 81, True, [0, 1, 80]),
    ('pgseg_imagenet_s919.py', make_imagenet_s, 920, True, [0, 300, 1000]),
    ('pgseg_imagenet_s300.py', partial(make_imagenet_s, version=300), 301, True, [0, 300, 1000]),
    ('pgseg_imagenet_s50.py', partial(make_imagenet_s, version=50, stripes=(0, 50, 1000)), 51, True, [0, 50, 1000]),
    ('pgseg_lvis.py', make_lvis, 1204, True, [0, 1203, 65535]),
]


def test_every_preset_is_covered():
    assert {c[0] for c in CASES} | {'toy.py'} == {p.name for p in PRESETS.glob('*.py')}


@pytest.mark.parametrize('preset,make,num_classes,with_bg,stripes', CASES, ids=[c[0] for c in CASES])
def test_preset_reads_fixture(tmp_path, preset, make, num_classes, with_bg, stripes):
    root = make(tmp_path / 'data')
    bench = load_benchmark(str(PRESETS / preset), [f'data_root={root}'])
    dataset = build_benchmark_dataset(bench)
    classes = dataset.metainfo['classes']
    assert len(classes) == num_classes and (classes[0] == 'background') == with_bg
    sample = dataset[0]
    short = min(next(step for step in bench.test_pipeline if step['type'] == 'Resize')['scale'])
    assert tuple(sample['inputs'].shape) == (3, short, short * W // H)  # the preset's short side, aspect kept
    gt = sample['data_samples'].gt_sem_seg.data[0].numpy()
    assert gt.shape == (H, W)  # ground truth stays at the original size
    assert [int(gt[0, k * W // 3]) for k in range(3)] == stripes


def test_class_names_are_the_papers_prompts(tmp_path):
    voc = build_benchmark_dataset(load_benchmark(str(PRESETS / 'pascal_voc12.py'),
                                                 [f'data_root={make_voc(tmp_path / "voc")}']))
    names = voc.metainfo['classes']
    assert names[11] == 'table' and names[16] == 'plant' and names[20] == 'monitor'
    tcl = build_benchmark_dataset(load_benchmark(str(PRESETS / 'tcl_voc.py'), [f'data_root={tmp_path / "voc"}']))
    assert tcl.metainfo['classes'][11] == 'diningtable' and tcl.metainfo['classes'][20] == 'tvmonitor'

    ctx_root = make_context(tmp_path / 'ctx')
    ctx = build_benchmark_dataset(load_benchmark(str(PRESETS / 'pascal_context.py'), [f'data_root={ctx_root}']))
    c = ctx.metainfo['classes']
    assert (c[1], c[40], c[50], c[55]) == ('airplane', 'plant', 'table', 'monitor')

    coco_root = make_coco(tmp_path / 'coco')
    bench = load_benchmark(str(PRESETS / 'pgseg_coco.py'), [f'data_root={coco_root}'])
    coco = build_benchmark_dataset(bench)
    c = coco.metainfo['classes']
    assert (c[5], c[59], c[61], c[63]) == ('airplane', 'potted plant', 'dining table', 'tv')
    prompts = prompt_names(bench, c, True)
    assert prompts[4] == 'aeroplane ' and prompts[58] == 'potted plant' and len(prompts) == 80
    assert bench.test_cfg.bg_thresh == 0.85


def test_toy_preset_reads_generated_world(tmp_path):
    root = make_toy(tmp_path / 'toy')
    bench = load_benchmark(str(PRESETS / 'toy.py'), [f'data_root={root}'])
    dataset = build_benchmark_dataset(bench)
    assert len(dataset) == 3 and len(dataset.metainfo['classes']) == 9
    assert tuple(dataset[0]['inputs'].shape) == (3, 64, 64)  # 64 px images are not resized
    tune = build_benchmark_dataset(load_benchmark(
        str(PRESETS / 'toy.py'), [f'data_root={root}', 'dataset.ann_file=ImageSets/Segmentation/tune.txt']))
    assert len(tune) == 2
    val = load_benchmark(str(PRESETS / 'toy.py'), [f'data_root={root}'])
    bench = select_split(val, 'tune')
    assert len(build_benchmark_dataset(bench)) == 2
    assert bench.dataset.ann_file == 'ImageSets/Segmentation/tune.txt'
    assert val.dataset.ann_file == 'ImageSets/Segmentation/val.txt'  # the original is left as it was
    assert evaluate_background(benchmark=val, split='tune')['protocol']['num_images'] == 2
    coco = load_benchmark(str(PRESETS / 'coco.py'))
    assert select_split(coco, 'val') is coco  # a folder-listed set keeps its images for the default split
    with pytest.raises(SegDataError, match='no split'):
        select_split(coco, 'tune')


def test_background_baseline_matches_hand_computation(tmp_path):
    bench = load_benchmark(str(PRESETS / 'pascal_voc12.py'), [f'data_root={make_voc(tmp_path / "voc")}'])
    result = evaluate_background(benchmark=bench)
    # each image: 10 background, 10 table (11), 10 ignored pixel columns; all predicted background
    assert result['per_class']['background']['IoU'] == pytest.approx(50.0)
    assert result['per_class']['table']['IoU'] == 0.0
    assert result['per_class']['cat']['IoU'] is None
    assert result['mIoU'] == pytest.approx(25.0) and result['aAcc'] == pytest.approx(50.0)


class HalvesModel(torch.nn.Module):
    """Two groups, the left and the right half of the image; `grouped=False`: a method without groups."""

    def __init__(self, grouped=True):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.grouped = grouped

    def tokenize(self, texts):
        return torch.zeros(len(texts), 1, dtype=torch.long)

    def build_text_embedding(self, text):
        return torch.zeros(text.shape[0], 4)

    def group_view(self, img, text_embedding, bg_thresh):
        if not self.grouped:
            return None
        h, w = img.shape[-2:]
        left = (torch.arange(w) < w // 2).float().expand(h, w)
        return GroupView([torch.stack([left, 1 - left], -1)], torch.zeros(2, len(text_embedding)), bg_thresh)


def test_group_oracle_labels_each_group_with_its_majority_class(tmp_path):
    bench = load_benchmark(str(PRESETS / 'pascal_voc12.py'), [f'data_root={make_voc(tmp_path / "voc")}'])
    result = evaluate_group_oracle(HalvesModel(), benchmark=bench)
    # columns 0-9 background, 10-19 table, 20-29 ignored: the left half (10 background, 5 table) -> background,
    # the right half (5 table, 10 ignored) -> table
    assert result['per_class']['background']['IoU'] == pytest.approx(100 * 10 / 15)
    assert result['per_class']['table']['IoU'] == pytest.approx(100 * 5 / 10)
    assert result['mIoU'] == pytest.approx(100 * (10 / 15 + 5 / 10) / 2)
    assert evaluate_group_oracle(HalvesModel(grouped=False), benchmark=bench) is None


def error_of(fn):
    with pytest.raises(SegDataError) as info:
        fn()
    message = str(info.value)
    assert '\n' not in message
    return message


def build(preset, root, *opts):
    return build_benchmark_dataset(load_benchmark(str(PRESETS / preset), [f'data_root={root}', *opts]))


def test_missing_data_root(tmp_path):
    assert str(tmp_path / 'nowhere') in error_of(lambda: build('pascal_voc12.py', tmp_path / 'nowhere'))


def test_missing_image_folder(tmp_path):
    root = make_voc(tmp_path / 'voc')
    os.rename(root / 'JPEGImages', root / 'images')
    assert str(root / 'JPEGImages') in error_of(lambda: build('pascal_voc12.py', root))


def test_empty_split_file(tmp_path):
    root = make_voc(tmp_path / 'voc')
    split = root / 'ImageSets/Segmentation/val.txt'
    split.write_text('\n')
    assert f'split file is empty: {split}' in error_of(lambda: build('pascal_voc12.py', root))
    split.unlink()
    assert f'split file not found: {split}' in error_of(lambda: build('pascal_voc12.py', root))


def test_image_without_mask(tmp_path):
    root = make_voc(tmp_path / 'voc', ids=('a', 'b', 'c'))
    (root / 'SegmentationClass/b.png').unlink()
    (root / 'SegmentationClass/c.png').unlink()
    message = error_of(lambda: build('pascal_voc12.py', root))
    assert f'mask not found: {root / "SegmentationClass/b.png"}' in message
    assert str(root / 'JPEGImages/b.jpg') in message and '1 more' in message


def test_listed_image_missing(tmp_path):
    root = make_voc(tmp_path / 'voc')
    (root / 'JPEGImages/2007_000042.jpg').unlink()
    assert 'image not found' in error_of(lambda: build('pascal_voc12.py', root))


def test_folder_without_images(tmp_path):
    root = make_coco(tmp_path / 'coco')
    (root / 'images/val2017/000000000139.jpg').unlink()
    assert "no images ending in '.jpg'" in error_of(lambda: build('coco.py', root))


def test_toy_without_class_list(tmp_path):
    root = make_toy(tmp_path / 'toy')
    (tmp_path / 'toy/classes.json').unlink()
    assert 'classes.json' in error_of(lambda: build('toy.py', root))


def test_bad_overrides(tmp_path):
    assert "unknown key 'test_cfg.bg_tresh'" in error_of(
        lambda: load_benchmark(str(PRESETS / 'toy.py'), ['test_cfg.bg_tresh=0.1']))
    assert (error_of(lambda: load_benchmark(str(PRESETS / 'toy.py'), ['data_root']))
            == "evaluate.seg.opts: key 'data_root' has no value (use key=value or 'key value')")
    assert error_of(lambda: load_benchmark(str(PRESETS / 'toy.py'), ['test_cfg.template=fancy'])) == (
        f"{PRESETS / 'toy.py'}: test_cfg.template: unknown template set 'fancy'; choose one of custom, full, identity, "
        'simple, subset')
    bench = load_benchmark(str(PRESETS / 'toy.py'), ['test_cfg.template', 'custom', 'test_cfg.bg_thresh=0.25'])
    assert bench.test_cfg.template == 'custom' and bench.test_cfg.bg_thresh == 0.25
    assert 'config not found' in error_of(lambda: load_benchmark(str(tmp_path / 'none.py')))

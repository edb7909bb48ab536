"""ImageNet-S (50 / 300 / 919) and LVIS as PGSeg evaluates them: class lists, the label PNG encodings, fixtures
laid out like the releases, and main_seg.py against a direct computation for a random GroupViT and PGSeg."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import main_seg
import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from benchmarks.seg_fixtures import write_imagenet_s, write_lvis
from models import build_model
from segmentation.datasets import (LoadLabelIds, SegDataError, encode_rgb_label_ids, imagenet_s_classes,
                                   imagenet_s_wnids, lvis_classes, read_label_ids)
from datasets.templates import get_templates
from mmseg.models import SegDataPreProcessor
from segmentation.evaluation import (ZeroShotSegmentor, build_benchmark_dataset, class_names, load_benchmark,
                                     prompt_names)
from utils.checkpoint import load_weights, save_checkpoint
from utils.config import load_config
from utils.zero_shot import class_embeddings

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / 'segmentation/configs/_base_/datasets'


def test_class_lists_are_the_release_and_pgseg_lists():
    wnids = {v: imagenet_s_wnids(v) for v in (50, 300, 919)}
    assert {v: len(w) for v, w in wnids.items()} == {50: 50, 300: 300, 919: 919}
    assert all(list(w) == sorted(w) for w in wnids.values())  # class id = position in the sorted wnids
    assert set(wnids[50]) < set(wnids[300]) < set(wnids[919])
    s919 = imagenet_s_classes(919)
    assert len(s919) == 920 and s919[0] == 'background'
    # PGSeg's names, verbatim: tench n01440764, great white shark n01484850, toilet tissue n15075141 (last)
    assert (s919[1], s919[3], s919[919]) == ('tench', 'great_white_shark', 'toilet_tissue')
    assert wnids[919][0] == 'n01440764' and wnids[919][-1] == 'n15075141'
    s50 = imagenet_s_classes(50)
    assert len(s50) == 51 and s50[1] == 'goldfish' and wnids[50][0] == 'n01443537'  # S50 id 1 = goldfish
    assert all(s919[wnids[919].index(w) + 1] == name for w, name in zip(wnids[50], s50[1:]))
    lvis = lvis_classes()
    assert len(lvis) == 1204 and lvis[1] == 'aerosol_can' and lvis[-1] == 'zucchini'
    with pytest.raises(SegDataError, match='version must be one of'):
        imagenet_s_classes(1000)


def test_rgb_label_png_decodes_to_r_plus_256_g(tmp_path):
    """A hand-made ImageNet-S mask: (R, G, B) = (id % 256, id // 256, 0); 1000 = (232, 3, 0) is ignored."""
    rgb = np.array([[[0, 0, 0], [1, 0, 0], [255, 0, 0]],
                    [[0, 1, 0], [151, 3, 0], [232, 3, 0]]], np.uint8)
    path = tmp_path / 'mask.png'
    Image.fromarray(rgb).save(path)
    assert read_label_ids(path, 'rgb').tolist() == [[0, 1, 255], [256, 919, 1000]]
    assert np.array_equal(encode_rgb_label_ids([[0, 1, 255], [256, 919, 1000]]), rgb)
    results = LoadLabelIds('rgb').transform(dict(seg_map_path=str(path), num_classes=920, ignore_index=1000))
    assert results['gt_seg_map'].tolist() == [[0, 1, 255], [256, 919, 1000]]
    with pytest.raises(SegDataError, match=r'holds ids 255, 256, 919: neither a class \(0..50\) nor the ignore value'):
        LoadLabelIds('rgb').transform(dict(seg_map_path=str(path), num_classes=51, ignore_index=1000))


def test_gray_label_png_holds_16_bit_ids(tmp_path):
    path = tmp_path / 'lvis.png'
    Image.fromarray(np.array([[0, 7, 1203], [255, 256, 65535]], np.uint16)).save(path)
    assert read_label_ids(path, 'gray').tolist() == [[0, 7, 1203], [255, 256, 65535]]
    eight_bit = tmp_path / 'eight.png'
    Image.fromarray(np.array([[0, 200]], np.uint8)).save(eight_bit)
    assert read_label_ids(eight_bit, 'gray').tolist() == [[0, 200]]


def test_wrong_kind_of_png_is_one_line(tmp_path):
    grey = tmp_path / 'grey.png'
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(grey)
    with pytest.raises(SegDataError, match=r'has mode L; expected RGB \(class id = R \+ 256 \* G\)'):
        read_label_ids(grey, 'rgb')
    rgb = tmp_path / 'rgb.png'
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(SegDataError, match='has mode RGB; expected 8- or 16-bit single-channel'):
        read_label_ids(rgb, 'gray')
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    with pytest.raises(SegDataError, match=f'cannot read label PNG {broken}'):
        read_label_ids(broken, 'rgb')


def build(preset, *opts):
    return build_benchmark_dataset(load_benchmark(str(PRESETS / preset), list(opts)))


@pytest.mark.parametrize('version', [50, 300, 919])
def test_each_version_reads_its_release_layout(tmp_path, version):
    big = (2400, 3200) if version == 919 else (40, 50)  # one picture of several thousand pixels a side
    root = write_imagenet_s(tmp_path, version, [(version, 30, 45), (1, *big), (2, 50, 40)])
    dataset = build(f'pgseg_imagenet_s{version}.py', f'data_root={root}')
    assert len(dataset) == 3 and len(dataset.metainfo['classes']) == version + 1
    wnids = imagenet_s_wnids(version)
    for index in range(3):
        sample = dataset[index]
        wnid = Path(dataset.get_data_info(index)['img_path']).parent.name
        gt = sample['data_samples'].gt_sem_seg.data[0].numpy()
        # each picture holds its folder's class, class 1 in a corner, "other" and an ignored ring
        assert set(np.unique(gt)) == {0, 1, wnids.index(wnid) + 1, 1000}
        if gt.shape == (2400, 3200):
            assert tuple(sample['inputs'].shape) == (3, 448, 597)  # resized to short side 448, labels are not


def test_lusseg_name_list_and_stem_list(tmp_path):
    root = write_imagenet_s(tmp_path, 50, [(3, 20, 30), (4, 20, 30)])
    stems = sorted(p.relative_to(root / 'validation').with_suffix('') for p in (root / 'validation').rglob('*.JPEG'))
    (root / 'lusseg.txt').write_text(''.join(f'{s}.JPEG {s}.png\n' for s in stems))
    (root / 'stems.txt').write_text(f'{stems[1]}\n')
    lusseg = build('pgseg_imagenet_s50.py', f'data_root={root}', 'dataset.ann_file=lusseg.txt')
    assert [lusseg.get_data_info(i)['seg_map_path'] for i in range(2)] == [
        str(root / 'validation-segmentation' / f'{s}.png') for s in stems]
    assert len(build('pgseg_imagenet_s50.py', f'data_root={root}', 'dataset.ann_file=stems.txt')) == 1
    (root / 'bad.txt').write_text('a b c\n')
    with pytest.raises(SegDataError, match='bad.txt:1: expected'):
        build('pgseg_imagenet_s50.py', f'data_root={root}', 'dataset.ann_file=bad.txt')


def test_lvis_reads_pgseg_layout(tmp_path):
    root = write_lvis(tmp_path / 'lvis', [(1203, 40, 60), (17, 30, 30)])
    dataset = build('pgseg_lvis.py', f'data_root={root}')
    assert len(dataset) == 2 and dataset.metainfo['classes'][1203] == 'zucchini'
    gt = dataset[0]['data_samples'].gt_sem_seg.data[0].numpy()
    assert set(np.unique(gt)) == {0, 1, 1203, 65535}
    assert load_benchmark(str(PRESETS / 'pgseg_lvis.py')).test_cfg.bg_thresh == 0.35


def test_masks_of_the_wrong_encoding_stop_before_the_model(tmp_path):
    root = write_imagenet_s(tmp_path, 50, [(3, 20, 30)])
    mask = next((root / 'validation-segmentation').rglob('*.png'))
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)  # 8-bit grey, as a converted copy might be
    with pytest.raises(SegDataError, match=f'label PNG {mask} has mode L'):
        build('pgseg_imagenet_s50.py', f'data_root={root}')
    with pytest.raises(SegDataError, match="must read masks with LoadLabelIds\\(encoding='rgb'\\)"):
        build('pgseg_imagenet_s50.py', f'data_root={root}',
              'test_pipeline=[{type: LoadImageFromFile}, {type: LoadAnnotations}, {type: PackSegInputs}]')


# ---- main_seg.py end to end against a direct computation --------------------------------------------------

MODEL_YML = """\
_base_: {default}
evaluate:
  seg:
    cfg: {preset}
    opts: {opts}
model:
  type: MultiLabelContrastive
  img_encoder: {{type: {kind}, img_size: 64, patch_size: {patch}, embed_dim: 32, depths: [1, 1, 1],
                num_heads: [2, 2, 2], num_group_tokens: [8, 4, 0], num_output_groups: [8, 4]}}
  text_encoder: {{type: TextTransformer, context_length: 77, width: 32, layers: 1, vocab_size: 49408}}
  output_dim: 16
"""
# The 919-class copy runs at the toy scale (short side 64, 64 px windows), so that the direct computation can
# hold every class's logits; the 50-class copy runs at PGSeg's scale with a 2000x3000 picture.
TOY_SCALE_PRESET = """\
_base_ = ['{base}']
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 64), keep_ratio=True),
    dict(type='LoadLabelIds', encoding='rgb'),
    dict(type='PackSegInputs'),
]
test_cfg = dict(crop_size=(64, 64), stride=(32, 32))
"""
CASES = {  # version -> images (class id, h, w), patch size of the tiny model
    50: ([(50, 300, 420), (1, 2000, 3000)], 16),
    919: ([(919, 90, 120), (300, 140, 100), (1, 64, 64)], 8),
}


def write_run(tmp, kind, version):
    images, patch = CASES[version]
    data_root = write_imagenet_s(tmp / 'data', version, images)
    preset = PRESETS / f'pgseg_imagenet_s{version}.py'
    if version == 919:
        preset = tmp / 'imagenet_s919_toy_scale.py'
        preset.write_text(TOY_SCALE_PRESET.format(base=PRESETS / 'pgseg_imagenet_s919.py'))
    cfg_path = tmp / f'{kind}.yml'
    cfg_path.write_text(MODEL_YML.format(default=ROOT / 'configs/default.yml', kind=kind, patch=patch, preset=preset,
                                         opts=json.dumps([f'data_root={data_root}', 'num_workers=0'])))
    torch.manual_seed(0)
    model = build_model(load_config(str(cfg_path)).model)
    with torch.no_grad():
        for weight in model.img_encoder.parameters():
            if weight.dim() >= 2:
                weight.normal_(0, 2 / weight[0].numel()**0.5)  # several groups own pixels
    return str(cfg_path), save_checkpoint(str(tmp / f'{kind}.pth'), model.state_dict()), preset


def direct_miou(cfg_path, ckpt):
    """Dense logits of the plain ZeroShotSegmentor, every class resized to the original image (a few at a time),
    arg-max, against masks decoded by hand (R + 256 G, 1000 ignored): mIoU over classes seen in either."""
    cfg = load_config(cfg_path)
    model = build_model(cfg.model).eval()
    load_weights(model, ckpt)
    bench = load_benchmark(cfg.evaluate.seg.cfg, list(cfg.evaluate.seg.opts) + ['test_cfg.compact_logits=false'])
    dataset = build_benchmark_dataset(bench)
    classes, with_bg = class_names(dataset)
    text = class_embeddings(model, prompt_names(bench, classes, with_bg), get_templates('simple'))
    preprocessor = {k: v for k, v in bench.data_preprocessor.items() if k != 'type'}
    segmentor = ZeroShotSegmentor(model, text, with_bg, bench.test_cfg, SegDataPreProcessor(**preprocessor)).eval()
    num = len(classes)
    confusion = np.zeros((num, num), np.int64)
    for index in range(len(dataset)):
        data = dataset[index]
        batch = segmentor.data_preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]))
        with torch.no_grad():
            logits = segmentor.inference(batch['inputs'], [data['data_samples'].metainfo])
        rgb = np.asarray(Image.open(data['data_samples'].seg_map_path)).astype(np.int64)
        gt = rgb[..., 0] + 256 * rgb[..., 1]
        best, pred = None, None
        for start in range(0, num, 8):
            part = F.interpolate(logits[:, start:start + 8], size=gt.shape, mode='bilinear', align_corners=False)[0]
            value, idx = part.max(dim=0)
            if best is None:
                best, pred = value, idx
            else:
                pred = torch.where(value > best, idx + start, pred)
                best = torch.maximum(value, best)
        valid = gt != 1000
        confusion += np.bincount(gt[valid] * num + pred.numpy()[valid], minlength=num * num).reshape(num, num)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    seen = union > 0
    return float(np.mean(np.diag(confusion)[seen] / union[seen]) * 100), int(seen.sum())


@pytest.mark.parametrize('kind, version', [('PGSeg', 50), ('GroupViT', 919)])
def test_main_seg_equals_direct_computation(tmp_path, kind, version):
    cfg_path, ckpt, preset = write_run(tmp_path, kind, version)
    assert load_benchmark(str(preset)).test_cfg.compact_logits  # main_seg: compact path; direct_miou: dense
    main_seg.main([cfg_path, '--resume', ckpt, '--output', str(tmp_path / 'out')])
    report = json.loads((tmp_path / 'out' / f'seg_{preset.stem}.json').read_text())
    assert report['protocol']['num_classes'] == version + 1 and report['protocol']['bg_thresh'] == 0.11
    expected, seen = direct_miou(cfg_path, ckpt)
    assert seen >= 3  # background, class 1 and at least one object class are scored
    assert report['mIoU'] == pytest.approx(expected, abs=1e-9)
    assert sum(v['IoU'] is not None for v in report['per_class'].values()) == seen

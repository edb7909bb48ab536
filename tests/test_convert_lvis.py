"""convert_dataset/convert_lvis.py on a hand-made LVIS-format json and COCO images written here: the label PNGs
are checked pixel by pixel against maps worked out by hand, and read back through the pgseg_lvis.py preset."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert_dataset import convert_lvis as lvis

ROOT = Path(__file__).resolve().parents[1]
NAMES = lvis.lvis_names()
# category ids of the file on purpose unlike the label ids: labels go by name
CATEGORIES = [dict(id=7, name='zucchini'), dict(id=3, name='aerosol_can'), dict(id=500, name='person')]
ZUCCHINI, AEROSOL_CAN, PERSON = 1203, 1, NAMES.index('person') + 1
H, W = 6, 8


def uncompressed_rle(mask):
    """[h, w] bool -> COCO's uncompressed RLE (runs down the columns, starting with a run of zeros)."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    counts, value, run = [], False, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return dict(size=list(mask.shape), counts=counts)


def expected_maps():
    """The two images' label maps, worked out by hand (pixel (r, c) covers [c, c+1) x [r, r+1))."""
    first = np.zeros((H, W), np.uint16)
    first[1:5, 0:7] = PERSON          # rectangle x 0..7, y 1..5 (the largest instance)
    first[2:4, 2:4] = AEROSOL_CAN     # rectangle x 2..4, y 2..4 inside it: the smaller one stays on top
    second = np.zeros((H, W), np.uint16)
    rows, cols = np.mgrid[0:H, 0:W]
    # triangle (0,0) (5,0) (0,4): centre (c+.5, r+.5) inside iff (c+.5)/5 + (r+.5)/4 < 1 iff 4c + 5r <= 15
    second[4 * cols + 5 * rows <= 15] = ZUCCHINI
    second[5, 6:8] = AEROSOL_CAN      # given as uncompressed RLE
    return {'000000000139': first, '000000000285': second}


def write_lvis_inputs(root, with_images=True, image_root=None, keep_images=False):
    """root/lvis_v1_val.json (2 images, one from COCO train2017 and one from val2017, as in LVIS v1 val) and,
    unless told not to, the COCO images under <image_root>/<split>/ (default root/coco/images; keep_images: leave
    images that are already there)."""
    root = Path(root)
    image_root = Path(image_root) if image_root else root / 'coco/images'
    rle_mask = np.zeros((H, W), bool)
    rle_mask[5, 6:8] = True
    data = dict(
        categories=CATEGORIES,
        images=[dict(id=139, height=H, width=W, coco_url='http://images.cocodataset.org/val2017/000000000139.jpg',
                     not_exhaustive_category_ids=[], neg_category_ids=[]),
                dict(id=285, height=H, width=W, coco_url='http://images.cocodataset.org/train2017/000000000285.jpg',
                     not_exhaustive_category_ids=[7], neg_category_ids=[])],
        annotations=[
            dict(id=1, image_id=139, category_id=3, segmentation=[[2, 2, 4, 2, 4, 4, 2, 4]]),
            dict(id=2, image_id=139, category_id=500, segmentation=[[0, 1, 7, 1, 7, 5, 0, 5]]),
            dict(id=3, image_id=285, category_id=7, segmentation=[[0, 0, 5, 0, 0, 4]]),
            dict(id=4, image_id=285, category_id=3, segmentation=uncompressed_rle(rle_mask)),
        ])
    root.mkdir(parents=True, exist_ok=True)
    (root / 'lvis_v1_val.json').write_text(json.dumps(data))
    if with_images:
        for split, stem in (('val2017', '000000000139'), ('train2017', '000000000285')):
            path = image_root / split / f'{stem}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (keep_images and path.exists()):
                Image.new('RGB', (W, H), (40, 90, 140)).save(path)
    return root / 'lvis_v1_val.json'


def test_names_are_pgseg_list():
    assert len(NAMES) == 1203 and NAMES[0] == 'aerosol_can' and NAMES[-1] == 'zucchini'


def test_lvis_v1_spelling_of_the_speaker_maps_to_pgseg_name():
    # LVIS v1 category 655 is 'speaker_(stero_equipment)'; PGSeg's list (and its prompt) says 'stereo'
    assert NAMES[654] == 'speaker_(stereo_equipment)'
    cats = [dict(id=655, name='speaker_(stero_equipment)'), dict(id=1, name='aerosol_can')]
    assert lvis.category_labels(cats, NAMES) == {655: 655, 1: 1}


def test_label_pngs_hold_the_hand_made_class_ids(tmp_path, capsys):
    ann = write_lvis_inputs(tmp_path)
    out = tmp_path / 'lvis'
    assert lvis.main([str(ann), '-o', str(out), '--image-root', str(tmp_path / 'coco/images')]) == 0
    assert 'wrote 2 maps' in capsys.readouterr().out
    for stem, expected in expected_maps().items():
        with Image.open(out / 'annotations' / f'{stem}.png') as img:
            assert img.mode in ('I;16', 'I;16B', 'I')  # 16 bits: ids up to 1203
            got = np.asarray(img).astype(np.int64)
        np.testing.assert_array_equal(got, expected.astype(np.int64), err_msg=stem)
        assert (out / 'images' / f'{stem}.jpg').is_symlink()
        assert Image.open(out / 'images' / f'{stem}.jpg').size == (W, H)
    assert (out / 'split/val_lvis.txt').read_text() == '000000000139\n000000000285\n'


def test_converted_maps_read_through_the_preset(tmp_path):
    import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
    from segmentation.evaluation import build_benchmark_dataset, load_benchmark
    ann = write_lvis_inputs(tmp_path)
    out = tmp_path / 'lvis'
    assert lvis.main([str(ann), '-o', str(out), '--image-root', str(tmp_path / 'coco/images')]) == 0
    preset = ROOT / 'segmentation/configs/_base_/datasets/pgseg_lvis.py'
    dataset = build_benchmark_dataset(load_benchmark(str(preset), [f'data_root={out}']))
    assert len(dataset) == 2
    classes = dataset.metainfo['classes']
    assert (classes[ZUCCHINI], classes[AEROSOL_CAN], classes[PERSON]) == ('zucchini', 'aerosol_can', 'person')
    expected = expected_maps()
    for i in range(2):
        sample = dataset[i]
        stem = Path(sample['data_samples'].img_path).stem
        np.testing.assert_array_equal(sample['data_samples'].gt_sem_seg.data[0].numpy(), expected[stem])


def test_missing_images_are_named_and_fail(tmp_path, capsys):
    ann = write_lvis_inputs(tmp_path, with_images=False)
    assert lvis.main([str(ann), '-o', str(tmp_path / 'lvis'), '--image-root', str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert 'ERROR image val2017/000000000139.jpg not found' in out
    assert (tmp_path / 'lvis/annotations/000000000285.png').is_file()  # the maps are still written
    assert lvis.main([str(ann), '-o', str(tmp_path / 'maps'), '--no-link']) == 0
    assert not (tmp_path / 'maps/images').exists()


def test_unknown_names_and_compressed_rle_stop_with_one_line(tmp_path):
    ann = write_lvis_inputs(tmp_path, with_images=False)
    data = json.loads(ann.read_text())
    data['categories'][0]['name'] = 'zuchini'
    ann.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"category 7 'zuchini' is not one of the 1203 LVIS names"):
        lvis.main([str(ann), '-o', str(tmp_path / 'out'), '--no-link'])
    data['categories'][0]['name'] = 'zucchini'
    data['annotations'][3]['segmentation'] = dict(size=[H, W], counts='PZ1')
    ann.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match='annotation 4: .*compressed RLE strings are not supported'):
        lvis.main([str(ann), '-o', str(tmp_path / 'out'), '--no-link'])
    with pytest.raises(SystemExit, match='--image-root is needed'):
        lvis.main([str(ann)])

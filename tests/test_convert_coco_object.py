"""convert_dataset/convert_coco_object.py on a tiny COCO-Stuff-164k layout written here."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convert_dataset import convert_coco_object as coco

# COCO-Stuff ids (0-indexed) -> COCO-Object ids under the published protocol, checked by hand:
# person(0)->1, traffic light(9)->10, fire hydrant(10)->11, stop sign(12)->12, toothbrush(89)->80,
# stuff banner(91)->0, stuff wood(181)->0, unlabelled(255)->0
SOURCE_ROW = [0, 9, 10, 12, 89, 91, 181, 255]
PUBLISHED_ROW = [1, 10, 11, 12, 80, 0, 0, 0]
KEEP_IGNORE_ROW = [1, 10, 11, 12, 80, 0, 0, 255]


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def coco_root(tmp_path):
    """train: 2 labelled images; val: 1 labelled image, 1 image without label, 1 unreadable label."""
    root = tmp_path / 'coco'
    label = np.array([SOURCE_ROW, SOURCE_ROW[::-1]])
    for split, stems in (('train2017', ['000000000009', '000000000025']),
                         ('val2017', ['000000000139', '000000000285'])):
        os.makedirs(root / 'images' / split)
        for stem in stems:
            Image.new('RGB', (8, 2)).save(root / 'images' / split / f'{stem}.jpg')
        for stem in stems[:2 if split == 'train2017' else 1]:
            write_png(str(root / 'annotations' / split / f'{stem}.png'), label)
    (root / 'annotations' / 'val2017' / '000000000632.png').write_bytes(b'not a png')
    write_png(str(root / 'annotations' / 'train2017' / '000000000009_labelTrainIds.png'), label)
    return root


def read_map(root, split, stem):
    return np.asarray(Image.open(root / 'annotations' / split / f'{stem}{coco.OUT_SUFFIX}'))


def test_lut_is_the_published_table():
    lut = coco.build_lut()
    assert len(coco.THING_IDS) == 80
    assert [int(lut[t]) for t in coco.THING_IDS] == list(range(1, 81))
    assert all(lut[s] == 0 for s in coco.STUFF_IDS)
    assert lut[255] == 0 and coco.build_lut(keep_ignore=True)[255] == 255
    assert [int(v) for v in lut[SOURCE_ROW]] == PUBLISHED_ROW


@pytest.mark.parametrize('nproc', [1, 2])
def test_converts_pixels_and_reports_problems(coco_root, capsys, nproc):
    rc = coco.main([str(coco_root), '--nproc', str(nproc)])
    out = capsys.readouterr().out
    assert rc == 1
    for split, stem in (('train2017', '000000000009'), ('train2017', '000000000025'), ('val2017', '000000000139')):
        got = read_map(coco_root, split, stem)
        assert got.dtype == np.uint8
        assert got.tolist() == [PUBLISHED_ROW, PUBLISHED_ROW[::-1]]
    assert 'unreadable' in out and '000000000632.png' in out
    assert 'no label PNG for image 000000000285.jpg' in out
    assert 'found 4 label PNGs (train2017: 2, val2017: 2), expected 123287' in out
    assert not (coco_root / 'annotations' / 'train2017' / '000000000009_labelTrainIds_instanceTrainIds.png').exists()


def test_keep_ignore_and_out_dir(coco_root, tmp_path, capsys):
    out_dir = tmp_path / 'out'
    coco.main([str(coco_root), '-o', str(out_dir), '--nproc', '1', '--splits', 'train2017', '--expected', '2'])
    assert read_map(out_dir, 'train2017', '000000000009').tolist() == [PUBLISHED_ROW, PUBLISHED_ROW[::-1]]
    assert (out_dir / 'images' / 'train2017' / '000000000009.jpg').exists()
    rc = coco.main([str(coco_root), '-o', str(out_dir), '--nproc', '1', '--splits', 'train2017',
                    '--expected', '2', '--keep-ignore'])
    assert rc == 0
    assert read_map(out_dir, 'train2017', '000000000009').tolist() == [KEEP_IGNORE_ROW, KEEP_IGNORE_ROW[::-1]]
    assert 'WARN' not in capsys.readouterr().out


def test_ids_coco_stuff_never_uses_are_reported(tmp_path, capsys):
    write_png(str(tmp_path / 'annotations' / 'val2017' / '1.png'), [[11, 200, 0]])
    rc = coco.main([str(tmp_path), '--nproc', '1', '--splits', 'val2017', '--expected', '1'])
    assert rc == 1
    assert '[11, 200]' in capsys.readouterr().out
    assert read_map(tmp_path, 'val2017', '1').tolist() == [[0, 0, 1]]


def test_cli_one_line_error_without_labels(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'convert_dataset', 'convert_coco_object.py')
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f'error: no label PNGs under {tmp_path}/annotations/'
                                                '{train2017,val2017}/']

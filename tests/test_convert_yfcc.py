"""create_subset.py + convert_yfcc14m.py: a 10-row YFCC100M metadata table and an image zip -> shards."""
import csv
import glob
import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from convert_dataset import convert_yfcc14m, create_subset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESCRIPTIONS = {
    1001: 'a+red%20car <b>parked</b>\nhere',
    1002: 'sunset',
    1003: '',
    1004: None,
    1005: 'two dogs on a beach',
    1006: 'my%20garden%0Ain spring',
    1007: 'old <a href="x">church</a> tower',
    1008: 'street\tmarket at night',
    1009: 'not in the subset',
    1010: 'also not in the subset',
}
CAPTIONS = {1001: 'a red car parked here', 1005: 'two dogs on a beach', 1006: 'my garden in spring',
            1007: 'old church tower', 1008: 'street market at night'}


def photo_hash(photoid):
    return hashlib.md5(str(photoid).encode()).hexdigest()


def jpeg(color):
    buf = io.BytesIO()
    Image.new('RGB', (8, 8), color).save(buf, format='JPEG')
    return buf.getvalue()


@pytest.fixture
def yfcc(tmp_path):
    """meta/yfcc100m_dataset.sql (10 rows), subset list (8 of them + 1 unknown id), 2 zips of images."""
    return write_yfcc_inputs(tmp_path, 'meta', 'zips')


def write_yfcc_inputs(tmp_path, meta_dir, zip_dir):
    """The fixture's files under tmp_path: <meta_dir>/yfcc100m_dataset.sql, yfcc100m_subset_data.tsv, <zip_dir>/."""
    meta = tmp_path / meta_dir
    meta.mkdir()
    conn = sqlite3.connect(meta / create_subset.DB_NAME)
    conn.execute('CREATE TABLE yfcc100m_dataset (photoid INTEGER, uid TEXT, title TEXT, description TEXT, '
                 'downloadurl TEXT, marker INTEGER)')
    conn.executemany('INSERT INTO yfcc100m_dataset VALUES (?, ?, ?, ?, ?, 0)',
                     [(pid, 'u1', f'title {pid}', d, f'http://x/{pid}.jpg') for pid, d in DESCRIPTIONS.items()])
    conn.commit()
    conn.close()
    subset = tmp_path / 'yfcc100m_subset_data.tsv'
    ids = [*range(1001, 1009), 9999]
    subset.write_text(''.join(f'{i}\t{pid}\t{photo_hash(pid)}\n' for i, pid in enumerate(ids)))
    zips = tmp_path / zip_dir
    zips.mkdir()
    for name, pids in (('000.zip', [1001, 1002, 1003, 1004]), ('001.zip', [1005, 1006, 1007, 1008, 4242])):
        with zipfile.ZipFile(zips / name, 'w') as z:
            z.writestr('data/images/', b'')
            for pid in pids:
                h = photo_hash(pid)
                z.writestr(f'data/images/{h[:3]}/{h[3:6]}/{h}.jpg', jpeg((pid % 256, 0, 0)))
    return tmp_path


def read_tsv(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f, delimiter='\t'))


def read_shards(folder):
    urls = sorted(glob.glob(os.path.join(folder, 'yfcc14m-*.tar')))
    return urls, {s['__key__']: s for s in wds.WebDataset(urls, shardshuffle=False).decode('pil')}


def test_create_subset_keeps_the_input_db(yfcc, capsys):
    out = yfcc / 'subset'
    create_subset.main(['--input-dir', str(yfcc / 'meta'), '--output-dir', str(out),
                        '--subset', str(yfcc / 'yfcc100m_subset_data.tsv')])
    assert '8/9 subset photo ids found' in capsys.readouterr().out
    with sqlite3.connect(yfcc / 'meta' / create_subset.DB_NAME) as conn:
        assert conn.execute('SELECT COUNT(*) FROM yfcc100m_dataset').fetchone() == (10,)
    with sqlite3.connect(out / create_subset.DB_NAME) as conn:
        got = dict(conn.execute('SELECT photoid, photo_hash FROM yfcc100m_dataset').fetchall())
    assert got == {pid: photo_hash(pid) for pid in range(1001, 1009)}
    rows = read_tsv(out / create_subset.TSV_NAME)
    assert rows[0] == ['file', 'caption']
    captions = dict(rows[1:])
    h = photo_hash(1001)
    assert captions[f'{h[:3]}/{h[3:6]}/{h}.jpg'] == 'a red car parked here'
    assert sorted(captions.values()) == sorted([*CAPTIONS.values(), 'sunset', '', ''])


def test_create_subset_refuses_to_overwrite_input(yfcc):
    with pytest.raises(SystemExit, match='--output-dir must differ'):
        create_subset.main(['--input-dir', str(yfcc / 'meta'), '--output-dir', str(yfcc / 'meta'),
                            '--subset', str(yfcc / 'yfcc100m_subset_data.tsv')])


def test_zips_to_shards_read_by_webdataset(yfcc, capsys):
    create_subset.main(['--input-dir', str(yfcc / 'meta'), '--output-dir', str(yfcc / 'subset'),
                        '--subset', str(yfcc / 'yfcc100m_subset_data.tsv')])
    shards = yfcc / 'shards'
    convert_yfcc14m.main(['--root', str(yfcc / 'zips'), '--info', str(yfcc / 'subset' / create_subset.TSV_NAME),
                          '--shards', str(shards), '--maxcount', '2'])
    out = capsys.readouterr().out
    assert 'written: 5, no_caption_row: 1, short_caption: 3, duplicate: 0, unreadable: 0, shards: 3' in out
    assert 'prefix: yfcc14m-{000000..000002}.tar  length: 5' in out
    urls, samples = read_shards(shards)
    assert [os.path.basename(u) for u in urls] == ['yfcc14m-000000.tar', 'yfcc14m-000001.tar', 'yfcc14m-000002.tar']
    assert {k: s['text'] for k, s in samples.items()} == {photo_hash(pid): c for pid, c in CAPTIONS.items()}
    for pid in CAPTIONS:
        image = samples[photo_hash(pid)]['jpg']
        assert image.size == (8, 8) and abs(image.getpixel((4, 4))[0] - pid % 256) <= 8


def test_image_folder_gives_the_same_shards(yfcc):
    create_subset.main(['--input-dir', str(yfcc / 'meta'), '--output-dir', str(yfcc / 'subset'),
                        '--subset', str(yfcc / 'yfcc100m_subset_data.tsv')])
    folder = yfcc / 'images'
    for name in sorted(os.listdir(yfcc / 'zips')):
        with zipfile.ZipFile(yfcc / 'zips' / name) as z:
            z.extractall(folder)
    cmd = [sys.executable, os.path.join(REPO, 'convert_dataset', 'convert_yfcc14m.py'),
           '--root', str(folder / 'data' / 'images'), '--info', str(yfcc / 'subset' / create_subset.TSV_NAME),
           '--shards', str(yfcc / 'folder_shards')]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    urls, samples = read_shards(yfcc / 'folder_shards')
    assert len(urls) == 1
    assert {k: s['text'] for k, s in samples.items()} == {photo_hash(pid): c for pid, c in CAPTIONS.items()}


def test_training_loader_reads_the_shards(yfcc):
    from omegaconf import OmegaConf

    from datasets.shards import build_train_data

    create_subset.main(['--input-dir', str(yfcc / 'meta'), '--output-dir', str(yfcc / 'subset'),
                        '--subset', str(yfcc / 'yfcc100m_subset_data.tsv')])
    convert_yfcc14m.main(['--root', str(yfcc / 'zips'), '--info', str(yfcc / 'subset' / create_subset.TSV_NAME),
                          '--shards', str(yfcc / 'shards'), '--maxcount', '2'])
    data_cfg = OmegaConf.create({
        'batch_size': 4, 'num_workers': 0, 'pin_memory': False, 'shuffle_buffer': 4,
        'dataset': {'meta': {'yfcc14m': {'type': 'img_txt_pair', 'path': str(yfcc / 'shards'),
                                         'prefix': 'yfcc14m-{000000..000002}.tar', 'length': 5}},
                    'train': ['yfcc14m'], 'val': []}})
    captions = list(CAPTIONS.values())
    data = build_train_data(data_cfg, img_transform=lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1),
                            text_transform=lambda text: torch.tensor(captions.index(text)), rank=0, world=1, seed=0)
    assert data.shard_report == {'yfcc14m': (3, 3)}
    batch = next(data)
    assert batch['image'].shape == (4, 3, 8, 8)
    assert batch['text'].shape == (4,) and not batch['bad']

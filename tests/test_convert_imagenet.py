"""convert_dataset/convert_imagenet.py: 20 tiny ImageNet-style val images -> jpg + cls shards."""
import glob
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from convert_dataset import convert_imagenet

WNIDS = ['n01440764', 'n01443537', 'n01484850', 'n01491361']  # sorted: class indices 0..3
# image i belongs to WNIDS[(7 * i) % 4], so file order and class order differ
LABELS = {f'ILSVRC2012_val_{i + 1:08d}': WNIDS[(7 * i) % 4] for i in range(20)}


def save_jpeg(path, wnid):
    Image.new('RGB', (10, 6), (40 * WNIDS.index(wnid), 0, 0)).save(path, format='JPEG')


@pytest.fixture
def flat(tmp_path):
    root = tmp_path / 'val'
    root.mkdir()
    for stem, wnid in LABELS.items():
        save_jpeg(root / f'{stem}.JPEG', wnid)
    return root


@pytest.fixture
def subfolders(tmp_path):
    root = tmp_path / 'val_folders'
    for stem, wnid in LABELS.items():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        save_jpeg(root / wnid / f'{stem}.JPEG', wnid)
    return root


def read_shards(folder):
    urls = sorted(glob.glob(os.path.join(folder, 'imagenet-val-*.tar')))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode('pil').to_tuple('__key__', 'jpg', 'cls'))
    return urls, samples


def check_samples(samples):
    assert sorted(key for key, _, _ in samples) == sorted(LABELS)
    for key, image, cls in samples:
        assert cls == WNIDS.index(LABELS[key])
        assert image.size == (10, 6) and abs(image.getpixel((5, 3))[0] - 40 * cls) <= 8


def test_subfolders_to_shards(subfolders, tmp_path, capsys):
    out = tmp_path / 'shards'
    assert convert_imagenet.main([str(subfolders), str(out), '--num-shards', '3']) == 0
    urls, samples = read_shards(out)
    assert [os.path.basename(u) for u in urls] == [f'imagenet-val-00000{i}.tar' for i in range(3)]
    assert [len(list(wds.WebDataset(u, shardshuffle=False))) for u in urls] == [7, 7, 6]
    check_samples(samples)
    output = capsys.readouterr().out
    assert 'prefix: imagenet-val-{000000..000002}.tar  length: 20' in output
    assert 'WARN 4 classes instead of 1000' in output


@pytest.mark.parametrize('kind', ['kaggle_csv', 'wnid_lines', 'index_lines'])
def test_flat_folder_with_labels(flat, tmp_path, kind):
    labels = tmp_path / 'labels.txt'
    if kind == 'kaggle_csv':
        labels.write_text('ImageId,PredictionString\n' + ''.join(f'{k},{w} 1 2 30 40\n' for k, w in LABELS.items()))
    elif kind == 'wnid_lines':
        labels.write_text(''.join(f'{k}.JPEG {w}\n' for k, w in LABELS.items()))
    else:
        labels.write_text(''.join(f'{k}.JPEG {WNIDS.index(w)}\n' for k, w in LABELS.items()))
    out = tmp_path / 'shards'
    convert_imagenet.main([str(flat), str(out), '--labels', str(labels), '--num-shards', '4', '--nproc', '2'])
    urls, samples = read_shards(out)
    assert len(urls) == 4
    check_samples(samples)


def test_classes_file_sets_the_index(subfolders, tmp_path):
    classes = tmp_path / 'LOC_synset_mapping.txt'
    classes.write_text('n00000001 extra class\n' + ''.join(f'{w} name {i}\n' for i, w in enumerate(WNIDS)))
    convert_imagenet.main([str(subfolders), str(tmp_path / 'shards'), '--classes', str(classes), '--num-shards', '1'])
    _, samples = read_shards(tmp_path / 'shards')
    assert all(cls == WNIDS.index(LABELS[key]) + 1 for key, _, cls in samples)


def test_devkit_ground_truth_is_refused(flat, tmp_path):
    labels = tmp_path / 'ILSVRC2012_validation_ground_truth.txt'
    labels.write_text(''.join(f'{i}\n' for i in range(1, 21)))
    with pytest.raises(SystemExit, match='devkit ground truth'):
        convert_imagenet.main([str(flat), str(tmp_path / 'shards'), '--labels', str(labels)])
    labels.write_text(''.join(f'{k} {w}\n' for k, w in LABELS.items()))
    with pytest.raises(SystemExit, match='20 images cannot fill --num-shards 50'):
        convert_imagenet.main([str(flat), str(tmp_path / 'shards'), '--labels', str(labels)])


def test_eval_loader_reads_every_sample_once(subfolders, tmp_path):
    from omegaconf import OmegaConf

    from datasets.shards import build_val_loader

    convert_imagenet.main([str(subfolders), str(tmp_path / 'shards'), '--num-shards', '3'])
    data_cfg = OmegaConf.create({
        'batch_size': 8, 'num_workers': 0, 'pin_memory': False, 'shuffle_buffer': 0,
        'dataset': {'meta': {'imagenet': {'type': 'img_cls_pair', 'path': str(tmp_path / 'shards'),
                                          'prefix': 'imagenet-val-{000000..000002}.tar', 'length': 20}},
                    'train': [], 'val': ['imagenet']}})
    targets = []
    for rank in range(2):
        loader, length = build_val_loader(data_cfg, lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1),
                                          rank=rank, world=2)
        assert length == 20
        for batch in loader:
            assert batch['image'].shape[1:] == (3, 6, 10)
            targets += batch['target'].tolist()
    assert sorted(targets) == sorted(WNIDS.index(w) for w in LABELS.values())

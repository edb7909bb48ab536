"""Stand-ins for what README commands need and this machine cannot have, written by the `before:` lines of the
README's markers (tests/readme_blocks.py), in the scratch copy the README test runs in.

    python tests/readme_fixtures.py published-checkpoint CONFIG PATH
        seeded random weights of CONFIG's model, saved as the published training code saves them
        (torch.save of {'model': state dict, 'epoch': ...}), at the path of a published checkpoint
    python tests/readme_fixtures.py yfcc100m
        the 10-row YFCC100M table yfcc100m/yfcc100m_dataset.sql, CLIP's subset list yfcc100m_subset_data.tsv and
        image zips in yfcc100m_zip/ (tests/test_convert_yfcc.py's fixture)
    python tests/readme_fixtures.py imagenet-val
        60 ImageNet validation images of 4 classes, as class subfolders imagenet/val/<wnid>/ and as the flat
        ILSVRC/Data/CLS-LOC/val/ with Kaggle's LOC_val_solution.csv and LOC_synset_mapping.txt
    python tests/readme_fixtures.py coco-stuff
        local_data/coco: 2 train and 2 val images with their COCO-Stuff-164k label PNGs
    python tests/readme_fixtures.py lvis-json
        local_data/lvis_v1_val.json: 2 images, 3 categories, 4 instances (tests/test_convert_lvis.py's fixture), and
        its two COCO images under local_data/coco/images/{val2017,train2017}/ where they are not there yet
"""
import argparse
import os
import sys
from pathlib import Path

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]


def published_checkpoint(config, path):
    import torch
    from models import build_model
    from utils.config import load_config
    torch.manual_seed(0)
    model = build_model(load_config(config).model)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    torch.save({'model': model.state_dict(), 'epoch': 29}, path)
    print(f'stand-in for a published checkpoint: {path} (random weights of {config})')


def yfcc100m():
    from test_convert_yfcc import write_yfcc_inputs
    write_yfcc_inputs(Path('.'), 'yfcc100m', 'yfcc100m_zip')
    print('YFCC100M fixture: yfcc100m/, yfcc100m_subset_data.tsv, yfcc100m_zip/')


def imagenet_val(count=60):
    from test_convert_imagenet import WNIDS, save_jpeg
    flat = Path('ILSVRC/Data/CLS-LOC/val')
    flat.mkdir(parents=True)
    labels = {f'ILSVRC2012_val_{i + 1:08d}': WNIDS[(7 * i) % len(WNIDS)] for i in range(count)}
    for stem, wnid in labels.items():
        (Path('imagenet/val') / wnid).mkdir(parents=True, exist_ok=True)
        save_jpeg(Path('imagenet/val') / wnid / f'{stem}.JPEG', wnid)
        save_jpeg(flat / f'{stem}.JPEG', wnid)
    Path('LOC_val_solution.csv').write_text(
        'ImageId,PredictionString\n' + ''.join(f'{stem},{wnid} 1 2 30 40\n' for stem, wnid in labels.items()))
    Path('LOC_synset_mapping.txt').write_text(''.join(f'{wnid} class {i}\n' for i, wnid in enumerate(WNIDS)))
    print(f'ImageNet fixture: {count} images in imagenet/val/ and {flat}/')


def coco_stuff():
    from test_convert_coco_object import SOURCE_ROW, write_png
    from PIL import Image
    root = Path('local_data/coco')
    for split, stems in (('train2017', ['000000000009', '000000000025']),
                         ('val2017', ['000000000139', '000000000285'])):
        (root / 'images' / split).mkdir(parents=True)
        for stem in stems:
            Image.new('RGB', (8, 2)).save(root / 'images' / split / f'{stem}.jpg')
            write_png(str(root / 'annotations' / split / f'{stem}.png'), [SOURCE_ROW, SOURCE_ROW[::-1]])
    print(f'COCO-Stuff fixture: {root}')


def lvis_json():
    from test_convert_lvis import write_lvis_inputs
    path = write_lvis_inputs('local_data', image_root='local_data/coco/images', keep_images=True)
    print(f'LVIS fixture: {path}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    checkpoint = commands.add_parser('published-checkpoint')
    checkpoint.add_argument('config')
    checkpoint.add_argument('path')
    for name in ('yfcc100m', 'imagenet-val', 'coco-stuff', 'lvis-json'):
        commands.add_parser(name)
    args = parser.parse_args(argv)
    if args.command == 'published-checkpoint':
        published_checkpoint(args.config, args.path)
    else:
        {'yfcc100m': yfcc100m, 'imagenet-val': imagenet_val, 'coco-stuff': coco_stuff,
         'lvis-json': lvis_json}[args.command]()


if __name__ == '__main__':
    main()

"""The quickstart end to end on a tiny toy world (a couple of training steps)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.make_toy_data import make_toy_world
from tools.quickstart import DEFAULT_METHOD, all_methods_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_world(tmp_path_factory):
    world = tmp_path_factory.mktemp('world') / 'toy'
    make_toy_world(str(world), train_samples=256, samples_per_shard=128, cls_samples=16, seg_val=6, seg_tune=4)
    return world


def quickstart(world, out, *flags):
    proc = subprocess.run([sys.executable, 'tools/quickstart.py', '--root', str(world), '--output', str(out),
                           '--epochs', '1', *flags], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quickstart_runs_end_to_end(tiny_world, tmp_path):
    """--method sclip (one run covers both kinds): the default method, the toy CLIP, is trained first in its own
    folder, then SCLIP segments with that CLIP, training-free."""
    out = tmp_path / 'qs'
    proc = quickstart(tiny_world, out, '--method', 'sclip')
    clip = json.loads((out / 'clip' / 'results.json').read_text())
    assert clip['method'] == DEFAULT_METHOD == 'clip'
    for key in ('trained_miou', 'untrained_miou', 'background_miou', 'trained_top1', 'untrained_top1'):
        assert 0 <= clip[key] <= 100, key
    # the all-background prediction scores only the background class: IoU = background share of the pixels
    assert 0 < clip['background_miou'] < 100
    assert clip['bg_thresh']['chosen_on'] == 'tune split'
    assert clip['images_per_second'] > 0 and clip['epochs'] == 1
    assert (out / 'clip' / 'loss_curves.png').stat().st_size > 0
    assert list((out / 'clip' / 'vis').glob('*.png'))
    assert '| trained |' in proc.stdout

    sclip = json.loads((out / 'results.json').read_text())
    assert sclip['method'] == 'sclip' and sclip['group_oracle_miou'] is None
    assert sclip['epochs'] == 0 and sclip['images_per_second'] is None  # nothing trained
    assert 0 <= sclip['trained_miou'] <= 100 and sclip['background_miou'] == clip['background_miou']
    # the demos and the web app read these two files
    assert (out / 'checkpoint.pth').is_file() and (out / 'config.yml').is_file()
    assert sclip['checkpoint'] == str(out / 'checkpoint.pth')


def test_unknown_method_is_one_line(tiny_world, tmp_path):
    proc = subprocess.run([sys.executable, 'tools/quickstart.py', '--root', str(tiny_world), '--output',
                           str(tmp_path), '--method', 'segformer'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: unknown method 'segformer'; choose one of clip, groupvit, pgseg, tcl, segclip, ovsegmentor, "
        "maskclip, sclip, clearclip, naclip"]


def test_all_methods_table():
    rows = [dict(method='groupvit', recipe='configs/toy/quickstart.yml', trained_top1=97.0, trained_miou=12.3,
                 untrained_miou=7.8, background_miou=9.3, group_oracle_miou=30.1, train_minutes=15.0,
                 images_per_second=140.2),
            dict(method='sclip', recipe='configs/toy/sclip_tiny.yml', trained_miou=41.0, untrained_miou=9.0,
                 background_miou=9.3, group_oracle_miou=None, train_minutes=0.0, images_per_second=None)]
    lines = all_methods_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith('| method |')
    assert lines[2] == ('| groupvit | `configs/toy/quickstart.yml` | 97.0 | 12.3 / 7.8 / 9.3 | 30.1 | 15.0 | 140.2 |')
    assert lines[3] == '| sclip | `configs/toy/sclip_tiny.yml` | - | 41.0 / 9.0 / 9.3 | - | 0.0 | - |'

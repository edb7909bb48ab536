"""The quickstart end to end on a tiny toy world (a couple of training steps)."""
import json
import subprocess
import sys
from pathlib import Path

from tools.make_toy_data import make_toy_world

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_end_to_end(tmp_path):
    world = tmp_path / 'toy'
    make_toy_world(str(world), train_samples=256, samples_per_shard=128, cls_samples=16, seg_val=6, seg_tune=4)
    out = tmp_path / 'qs'
    proc = subprocess.run([sys.executable, 'tools/quickstart.py', '--root', str(world), '--output', str(out),
                           '--epochs', '1'], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / 'results.json').read_text())
    for key in ('trained_miou', 'untrained_miou', 'background_miou', 'trained_top1', 'untrained_top1'):
        assert 0 <= results[key] <= 100, key
    # the all-background prediction scores only the background class: IoU = background share of the pixels
    assert 0 < results['background_miou'] < 100
    assert results['bg_thresh']['chosen_on'] == 'tune split'
    assert (out / 'loss_curves.png').stat().st_size > 0
    assert list((out / 'vis').glob('*.png'))
    assert (out / 'checkpoint.pth').is_file() and (out / 'config.yml').is_file()
    assert '| trained |' in proc.stdout

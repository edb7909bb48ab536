"""End-of-run figure of the training loss curves."""
import os.path as osp
from typing import Dict, Optional


def plot_loss_curves(history: Dict[str, Dict[int, float]], path: str, prefix: str = 'train/') -> Optional[str]:
    """One panel per logged loss term (names under ``prefix`` containing 'loss') against the optimizer step.

    Returns the written PNG path, or None when nothing was logged.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = sorted(n for n in history if n.startswith(prefix) and 'loss' in n and history[n])
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        steps, values = zip(*sorted(history[name].items()))
        ax.plot(steps, values, lw=1.2)
        ax.set_ylabel(name[len(prefix):])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('optimizer step')
    run = osp.dirname(osp.abspath(path))
    fig.suptitle(f'{osp.basename(osp.dirname(run))}/{osp.basename(run)}')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Run logging: a text log (console + <output>/log.txt), tensorboard event files, optional Weights & Biases,
and <output>/metrics.jsonl (every scalar, kept across restarts for the end-of-run plot)."""
import json
import logging
import os
import os.path as osp
import sys
from typing import Dict, Optional

LOGGER_NAME = 'pgseg'
FORMAT = '[%(asctime)s rank{rank}] %(levelname)s %(message)s'


def setup_logger(output: Optional[str], rank: int = 0) -> logging.Logger:
    """Root-level handlers so library loggers (e.g. utils.checkpoint) land in the same log.

    Rank 0 logs INFO to the console and to <output>/log.txt (appended across restarts); other ranks log warnings
    to the console only.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT.format(rank=rank), datefmt='%Y-%m-%d %H:%M:%S')
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.addHandler(console)
    if output is not None and rank == 0:
        os.makedirs(output, exist_ok=True)
        file_handler = logging.FileHandler(osp.join(output, 'log.txt'), mode='a')
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    return logging.getLogger(LOGGER_NAME)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class MetricWriter:
    """Scalars to tensorboard (<output>/tensorboard) and, when asked and installed, wandb; rank 0 only.

    Every scalar is also appended to <output>/metrics.jsonl and kept in ``history`` ({name: {step: value}});
    a restarted run reads the file back, so its plot covers the whole run (a re-run step overwrites the old one).
    """

    def __init__(self, output: str, rank: int, use_wandb: bool = False, run_name: str = '', config: dict = None):
        self.active = rank == 0
        self.history: Dict[str, Dict[int, float]] = {}
        self.tb = None
        self.wandb = None
        self.jsonl = osp.join(output, 'metrics.jsonl')
        if not self.active:
            return
        self._read_history()
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(osp.join(output, 'tensorboard'))
        if use_wandb:
            self.wandb = self._start_wandb(output, run_name, config)

    @staticmethod
    def _start_wandb(output: str, run_name: str, config: Optional[dict]):
        try:
            import wandb
        except ImportError:
            get_logger().warning('--wandb was given but wandb is not installed (pip install wandb); '
                                 'logging to tensorboard only')
            return None
        wandb.init(project='pgseg', name=run_name, dir=output, config=config, resume='allow')
        return wandb

    def _read_history(self):
        if not osp.isfile(self.jsonl):
            return
        with open(self.jsonl) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
                step = record.pop('step', None)
                for name, value in record.items():
                    self.history.setdefault(name, {})[step] = value

    def scalars(self, values: Dict[str, float], step: int):
        if not self.active:
            return
        values = {name: float(value) for name, value in values.items()}
        for name, value in values.items():
            self.history.setdefault(name, {})[step] = value
            self.tb.add_scalar(name, value, step)
        with open(self.jsonl, 'a') as f:
            f.write(json.dumps({'step': step, **values}) + '\n')
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

"""Mixed precision with torch.amp, keyed by the published apex opt levels.

| amp_opt_level | forward/backward            | loss scaling |
|---------------|-----------------------------|--------------|
| O0            | float32                     | none         |
| O1            | float16 autocast            | GradScaler   |
| O2            | bfloat16 autocast           | none         |
"""
import contextlib
from typing import Optional

import torch

LEVELS = {'O0': None, 'O1': torch.float16, 'O2': torch.bfloat16}


class Precision:
    """Autocast context and optional GradScaler for one opt level on one device type ('cuda' or 'cpu')."""

    def __init__(self, level: str, device_type: str):
        if level not in LEVELS:
            raise ValueError(f'amp_opt_level must be one of {sorted(LEVELS)}, got {level!r}')
        self.level = level
        self.dtype: Optional[torch.dtype] = LEVELS[level]
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type) if self.dtype == torch.float16 else None

    def describe(self) -> str:
        name = 'float32' if self.dtype is None else str(self.dtype).replace('torch.', '') + ' autocast'
        text = f'{self.level}: {name}' + (' + GradScaler' if self.scaler else '')
        if self.device_type == 'cpu' and self.dtype == torch.float16:
            # measured in benchmarks/NOTES.md: a GroupViT step 15x slower than float32, bfloat16 1.6x faster
            text += ' (float16 autocast is slow on most CPUs: use O2, bfloat16)'
        return text

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer):
        """Bring gradients back to their true scale (before clipping or measuring them)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer):
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> Optional[dict]:
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: Optional[dict]):
        if self.scaler and state:
            self.scaler.load_state_dict(state)

"""The training engine: configs, the loop, checkpoints and resume, DDP, progress and logs.

Example:
    >>> from mixlab.engine import load_config
    >>> load_config(None, ["train.epochs=2"]).train.epochs
    2
"""

from mixlab.engine.config import ConfigError, RunConfig, load_config
from mixlab.engine.loop import LoopSettings, Trainer
from mixlab.engine.run import RunRefusedError, RunResult, train

__all__ = [
    "ConfigError",
    "LoopSettings",
    "RunConfig",
    "RunRefusedError",
    "RunResult",
    "Trainer",
    "load_config",
    "train",
]

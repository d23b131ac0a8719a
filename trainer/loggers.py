"""Weights & Biases logger that runs offline unless W&B is explicitly set online.

Lightning's ``WandbLogger`` defaults to online, which needs an account and network access.
``WandbDefaultOffline`` takes its mode from ``mode`` in the config, else from the
``WANDB_MODE`` environment variable, else ``offline``. An offline run writes
``<save_dir>/wandb/offline-run-*``; ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


class WandbDefaultOffline(WandbLogger):
    """``WandbLogger`` whose mode is ``mode``, else ``$WANDB_MODE``, else ``offline``.

    Args:
        mode: ``online``, ``offline`` or ``disabled``; None reads ``WANDB_MODE``.
        project: W&B project name.
        save_dir: folder under which W&B writes its ``wandb/`` run folder.
        name: run name; None lets W&B choose one.
        log_model: upload checkpoints as artifacts (online mode only; Lightning rejects it offline).
    """

    def __init__(
        self,
        mode: Literal["online", "offline", "disabled"] | None = None,
        project: str = "classroom-emotion-stats",
        save_dir: str = "runs",
        name: str | None = None,
        log_model: bool = False,
    ) -> None:
        resolved = mode or os.environ.get("WANDB_MODE") or "offline"
        if resolved not in ("online", "offline", "disabled"):
            raise ValueError(f"W&B mode {resolved!r} (from WANDB_MODE) is invalid: use online, offline or disabled")
        os.makedirs(save_dir, exist_ok=True)
        log.info("W&B logging %s, project %s, under %s", resolved, project, save_dir)
        super().__init__(
            name=name,
            project=project,
            save_dir=save_dir,
            offline=resolved != "online",
            log_model=log_model and resolved == "online",
            mode=resolved,
        )

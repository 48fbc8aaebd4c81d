"""TensorBoard event files of a run: loss and its parts, lr, throughput, each evaluation's mIoU and the
prototype diagnostics. `tensorboard --logdir results/<sweep>` compares the runs of a sweep."""
from __future__ import annotations

from pathlib import Path

from .io import refuse_link

EVAL_SCALARS = ("mIoU", "mAcc", "aAcc", "prototype_diversity", "prototypes_used")


class Board:
    """A SummaryWriter in `folder`. A run resumed from its checkpoint at iteration i passes purge_step
    i + 1: TensorBoard drops what an earlier attempt logged after that checkpoint, so no step appears twice."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        for folder_or_parent in (folder.parent, folder):  # e.g. results/<sweep>/.tensorboard/<run>
            refuse_link(folder_or_parent, "TensorBoard folder")
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def train(self, step: int, loss: float, parts: dict, lr: float, img_s: float | None) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        for name, value in parts.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", lr, step)
        if img_s is not None:
            self.writer.add_scalar("train/images_per_s", img_s, step)

    def evaluation(self, step: int, result: dict) -> None:
        for name in EVAL_SCALARS:
            if result.get(name) is not None:
                self.writer.add_scalar(f"val/{name}", result[name], step)

    def close(self) -> None:
        self.writer.close()

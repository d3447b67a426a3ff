"""A training that signals itself at a chosen point: preemption tests without sleeps or timing.

The signal goes to the calling (main) thread with `pthread_kill`, which delivers it before the call
returns; Python runs its handler right after, in that thread. So the run is interrupted exactly where
the callback says, however loaded the machine is (a signal sent to the process could land in one of
torch's threads and reach the interpreter a moment later). Added to a run as a Hydra override:
`+callbacks.preempt._target_=preemption.SignalAt +callbacks.preempt.where=batch +callbacks.preempt.step=2`
(with this folder on PYTHONPATH).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning as L

WHERE = ("batch", "validation", "save")


class SignalAt(L.Callback):
    """Send the signal `signame` to this process once, at global step `step`:

    * ``batch``: at the start of the training batch that begins at that step (the signal arrives mid-batch);
    * ``validation``: at the first validation batch (not the sanity check) at or after that step;
    * ``save``: inside the first checkpoint save at that step (Lightning collects the callbacks' state
      while `trainer.save_checkpoint` runs).
    """

    def __init__(self, where: str, step: int, signame: str = "SIGTERM") -> None:
        if where not in WHERE:
            raise ValueError(f"where={where!r} must be one of {WHERE}")
        self.where, self.step, self.signum = where, int(step), signal.Signals[signame]
        self.sent = False

    def _send(self, where: str, trainer: L.Trainer, at_least: bool = False) -> None:
        step = trainer.global_step
        if self.sent or where != self.where or (step < self.step if at_least else step != self.step):
            return
        self.sent = True
        signal.pthread_kill(threading.get_ident(), self.signum)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._send("batch", trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._send("validation", trainer, at_least=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._send("save", trainer)


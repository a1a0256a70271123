"""Resuming after a crash: the backups a training command goes on from (its run: run_state.py).

A command's state lives in <output_dir>/.resume/<key>/ (run_state.command_state): besides run.json, backup-chief/
holds Keras' BackupAndRestore files (weights, optimizer state and the number of completed epochs) and the other
callbacks' counters, rewritten at each save point (an epoch's end, at most every `save_interval` seconds);
another worker's backup sits beside it.
"""

from __future__ import annotations

import filecmp
import json
import logging
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np

from tftrain.errors import UserError
from tftrain.keras_hooks import BACKUP_COPY, BACKUP_EPOCH, BACKUP_WEIGHTS, COUNTERS, initial_epoch
from tftrain.training.callbacks import SaveClock
from tftrain.training.run_state import CommandState
from tftrain.user_code import first_line

log = logging.getLogger(__name__)


def check_backup(state: CommandState) -> int:
    """The epochs the chief's backup restores (0: there is none). A backup torn by a crash (see _epochs): go back
    to the copy before it, both files together (Keras itself falls back for torn weights only, and fails on a torn
    epoch file); if that copy is unreadable too, say which files and what to do, rather than fail inside Keras."""
    backup = state.backup_folder()
    weights, epoch = backup / BACKUP_WEIGHTS, backup / BACKUP_EPOCH
    if not weights.exists() and not epoch.exists():
        return 0
    latest, before = _epochs(backup)
    if latest:
        return latest
    if not before:
        torn = weights if not _readable(weights) else epoch
        raise UserError(
            f"cannot resume: the backup {torn} is corrupt, and so is the copy before it; delete "
            f"{state.folder} to lose it and start afresh, or run with resume=never"
        )
    _go_back(backup)
    log.info(f"note: the latest backup in {backup} is corrupt; resuming from the one before it")
    return before


def _epochs(folder: Path) -> tuple[int, int]:
    """The epochs the latest backup and the copy before it restore, 0 for one that cannot. Keras writes a backup
    as: copy weights and epoch file to *.bkp, write the weights, write the epoch file; so the latest pair is whole
    only when both files read and its epoch file is newer than the copy's (a process killed after the copies, or
    mid-weights, leaves the old epoch file beside weights that may be new or torn), or it is the copy put back."""
    weights, epoch = folder / BACKUP_WEIGHTS, folder / BACKUP_EPOCH
    before = _epoch_of(Path(f"{weights}{BACKUP_COPY}"), Path(f"{epoch}{BACKUP_COPY}"))
    latest = _epoch_of(weights, epoch)
    gone_back = latest == before > 0 and filecmp.cmp(
        weights, f"{weights}{BACKUP_COPY}", shallow=False
    )  # the copy put back
    return (latest if latest > before or gone_back else 0), before


def _epoch_of(weights: Path, epoch: Path) -> int:
    if not (_readable(weights) and _epoch_readable(epoch)):
        return 0
    return json.loads(epoch.read_text())["epoch"]


def _go_back(folder: Path) -> None:
    """The copy before the latest backup becomes the latest."""
    for name in (BACKUP_WEIGHTS, BACKUP_EPOCH):
        shutil.copyfile(folder / f"{name}{BACKUP_COPY}", folder / name)


def _readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _epoch_readable(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text())["epoch"], int)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def backup_callbacks(
    state: CommandState, callbacks: list, clock: SaveClock, worker: str = "chief"
) -> list[keras.callbacks.Callback]:
    """Weights, optimizer state and epoch (Keras' BackupAndRestore, two copies kept, so a backup torn by a kill
    mid-write falls back to the one before), then the counters of the other callbacks, at each save point;
    restored when training begins. Their place in the list: callbacks.build_callbacks."""
    folder = state.backup_folder(worker)
    return [Backup(str(folder), clock), CallbackState(folder, callbacks, clock)]


def agree_on_backups(folder: Path, gathered) -> int:
    """Multi-worker: the epoch every worker restores, the same for all (a worker that restored another would wait
    forever for the others in a collective op). Workers killed between their backup writes can hold different
    latest backups; each also keeps the one before (Keras' two copies), so they take the latest epoch all of them
    can restore, going back to the copy before where a worker's latest is newer; if there is none, all start
    afresh. `gathered` takes this worker's number and returns every worker's."""
    latest, before = _epochs(folder)
    agreed = int(min(gathered(float(max(latest, before)))))
    if agreed and min(gathered(float(agreed in (latest, before)))) == 0:
        agreed = 0  # some worker cannot restore that epoch
    if not agreed:
        shutil.rmtree(folder, ignore_errors=True)
    elif latest != agreed:
        _go_back(folder)
    return agreed


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore (two copies kept), written at save points rather than every epoch."""

    def __init__(self, folder: str, clock: SaveClock):
        super().__init__(folder, double_checkpoint=True)
        self.clock = clock

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except ValueError as e:  # weights of other layers: a backup an older tftrain wrote (batch norms not fused)
            raise UserError(
                f"cannot resume from the backup in {self.backup_dir}: it does not load into this model "
                f"({first_line(e) or type(e).__name__}); "
                "run with resume=never to start afresh"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        if self.clock.due:
            super().on_epoch_end(epoch, logs)  # save_freq="epoch": records epoch + 1 as done and writes the backup


class CallbackState(keras.callbacks.Callback):
    """Early stopping's patience and best value (and best weights), the LR-plateau rule's counters and the best
    checkpoint's value, saved with each backup and put back on resume: a resumed run stops, cuts the learning rate
    and keeps checkpoints when an uninterrupted one would."""

    def __init__(self, folder: Path, callbacks: list, clock: SaveClock):
        super().__init__()
        self.folder = folder
        self.clock = clock
        self.tracked = [(c, fields) for c in callbacks if (fields := _fields(c))]
        self._saved_best_epoch = None

    def on_train_begin(self, logs=None):
        """After BackupAndRestore (earlier in the list) set the epoch to go on from."""
        epoch = initial_epoch(self.model)
        path = self.folder / f"callbacks-{epoch}.json"
        if not epoch or not path.exists():
            return
        for (callback, _), state in zip(self.tracked, json.loads(path.read_text()), strict=True):
            for name, value in state.items():
                setattr(callback, name, value)
            best = self.folder / "best-weights.npz"
            # none yet when the backup came before early stopping's first watched epoch (start_from_epoch)
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.restore_best_weights and best.exists():
                with np.load(best) as saved:
                    callback.best_weights = [saved[k] for k in saved.files]

    def on_epoch_end(self, epoch, logs=None):
        if not self.clock.due:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        states = [{name: _plain(getattr(c, name)) for name in fields} for c, fields in self.tracked]
        path = self.folder / f"callbacks-{epoch + 1}.json"  # named by the epoch the backup will say is done
        path.write_text(json.dumps(states))
        written = sorted(self.folder.glob("callbacks-*.json"), key=lambda p: (p == path, p.stat().st_mtime_ns))
        for old in written[:-2]:
            old.unlink()  # keep this backup's and the one written before it, as the weights backup does
        for c, _ in self.tracked:
            stopping = isinstance(c, keras.callbacks.EarlyStopping) and c.best_weights is not None
            if stopping and c.best_epoch != self._saved_best_epoch:
                np.savez(self.folder / "best-weights.npz", *c.best_weights)
                self._saved_best_epoch = c.best_epoch


def _fields(callback) -> tuple[str, ...]:
    """The counters of `callback` that a resume restores (none for callbacks without any)."""
    return next((names for kind, names in COUNTERS.items() if isinstance(callback, kind)), ())


def _plain(value):
    """JSON-ready: numpy scalars as Python numbers, None kept."""
    return value.item() if hasattr(value, "item") else value

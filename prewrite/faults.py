"""Stopping a run on a signal without losing work, and the errors that stop it on purpose.

SLURM and cloud preemption send SIGTERM (or SIGUSR1) and kill shortly after; Ctrl+C sends SIGINT.
While `stop_on_signals()` is active, those signals only record that a stop was asked for. The
training step checks at its safe points (prewrite.lightning_module: before the rollout, before scoring,
before the update, and in a dev evaluation) and raises `StopRequested` there, after undoing the
unfinished part of the step; `callbacks.StopOnSignal` then writes the checkpoint and marks the MLflow
run KILLED, and the process exits with 128 + the signal's number. A second Ctrl+C interrupts at once.
A task model that stays unreachable past its patience stops the run the same way (`TaskModelDown`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import NoReturn

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_received: int | None = None  # the first stop signal received, if any


class StopRequested(Exception):
    """Raised at a safe point after a stop signal; the run can be resumed from its checkpoint."""

    def __init__(self, signum: int):
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"
        super().__init__(f"Stopped by {signal.Signals(signum).name}")


class TaskModelDown(StopRequested):
    """The task model stayed unreachable past task_backend.outage_patience_s: stop as on a signal (the
    checkpoint, MLflow KILLED), to be resumed once it answers again."""

    def __init__(self, cause: Exception):
        Exception.__init__(self, f"Stopped: the task model is unavailable: {cause}")
        self.exit_code = 75  # EX_TEMPFAIL (sysexits.h): try again later


class NonFiniteError(RuntimeError):
    """Too many updates in a row had a non-finite loss, gradient or reward."""


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _received


def _handle(signum, frame) -> None:
    global _received
    if _received is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl+C: the user does not want to wait
    if _received is None:
        _received = signum
        log.warning(
            "Received %s: stopping at the next safe point, with a checkpoint (Ctrl+C again to interrupt at once)",
            signal.Signals(signum).name,
        )


def install_handlers() -> None:
    """Our handlers for STOP_SIGNALS (again: Lightning installs its own SIGTERM handler when fit starts)."""
    if threading.current_thread() is threading.main_thread():  # signals can only be handled there
        for s in STOP_SIGNALS:
            signal.signal(s, _handle)


@contextlib.contextmanager
def stop_on_signals():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    install_handlers()
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def exit_for_resume(e: StopRequested, run_dir: str) -> NoReturn:
    """The end of an entry point stopped by a signal: how to resume, and the shell's exit status."""
    print(f"\n{e}; resume with the same command and hydra.run.dir={run_dir}", file=sys.stderr)
    sys.exit(e.exit_code)


def raise_if_requested() -> None:
    """A safe point outside a training step (between stages, between scored candidates)."""
    if _received is not None:
        raise StopRequested(_received)


@contextlib.contextmanager
def ends_mlflow_run(client, run_id: str | None):
    """A parent MLflow run (of stages, of a comparison's seeds) ends KILLED when a stop or Ctrl+C leaves
    the block and FAILED on an error, never RUNNING: a re-launch in the same folder resumes it."""
    try:
        yield
    except BaseException as e:
        if run_id:
            client.set_terminated(run_id, "KILLED" if isinstance(e, StopRequested | KeyboardInterrupt) else "FAILED")
        raise


def agreed_stop(trainer, local: bool = False) -> int | None:
    """The stop signal if any rank received one or has another reason (`local`) to stop (a collective:
    call it on every rank), else None."""
    stop = trainer.strategy.reduce_boolean_decision(_received is not None or local, all=False)
    return (_received or signal.SIGTERM) if stop else None

"""The frame every `python -m prewrite.<tool>` runs its work in.

A bad option should end the command with one line naming the tool and the option, not a traceback; a
stop signal (SLURM, Ctrl+C) with how to resume; and MLflow's artifact downloads (the table helpers)
should not clutter the console with progress bars.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from hydra.core.hydra_config import HydraConfig

from prewrite import config_check, faults


@contextlib.contextmanager
def tool_main(tool: str, errors: tuple[type[Exception], ...] = (config_check.ConfigError,)) -> Iterator[None]:
    """Runs the block as `prewrite.<tool>`: an exception of `errors` exits with `prewrite.<tool>: <message>`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        yield
    except errors as e:
        raise SystemExit(f"prewrite.{tool}: {e}") from None
    except faults.StopRequested as e:
        faults.exit_for_resume(e, HydraConfig.get().runtime.output_dir)

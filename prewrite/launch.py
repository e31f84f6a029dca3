"""`${launch_time:<strftime pattern>}`: the time that names a run folder, the same in every process
of a torchrun job.

Hydra's `${now:...}` is read by each process as it starts, and torchrun's processes start moments
apart: across a second boundary two ranks would name two run folders, and write checkpoints and look
for one to resume in different places. Under torchrun the first process to ask puts its time in
torchrun's own key-value store (the agent's TCPStore, which workers can reach at
MASTER_ADDR:MASTER_PORT before any process group exists) and every process reads it from there. The
key lives as long as the torchrun job, so workers restarted by torchrun (`--max-restarts`) find their
folder again and resume from its last checkpoint. Elsewhere it is the process's own clock; the
value is cached in the config like `now`'s, which is how Hydra's submitit launcher gives every task
of a SLURM job the folder named when the job was submitted.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from functools import cache

STORE_KEY = "prewrite/launch_time"
STORE_TIMEOUT = timedelta(minutes=5)  # the agent's store is up before any worker starts


def launch_time(pattern: str) -> str:
    return _launch_time().strftime(pattern)


@cache
def _launch_time() -> datetime:
    now = datetime.now()
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # not a torchrun worker
        return now
    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=STORE_TIMEOUT)
    # compare_set writes only if the key is absent and returns the stored value: the first process's time
    return datetime.fromisoformat(store.compare_set(STORE_KEY, "", now.isoformat()).decode())

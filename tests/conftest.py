import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow import MlflowClient
from omegaconf import open_dict

import prewrite  # noqa: F401  (registers the ${cwd:} resolver that conf/paths uses)
from prewrite import model_zoo

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# conf/train.yaml's task: its run folder outputs/runs/<task>, its MLflow experiment and prompt prewrite-<task>
DEFAULT_TASK = "sst2_sentences"
DEFAULT_EXPERIMENT = f"prewrite-{DEFAULT_TASK}"


def run_at_once(*cmds: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Runs the commands side by side from the repository root, as `subprocess.run(cmd,
    capture_output=True, text=True)` would one after another: each is a fresh interpreter that spends most
    of its time importing, so on 2 cores they overlap well."""
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        return done
    finally:
        for p in procs:
            p.kill()  # only those a timeout left running; a finished one ignores it
            p.wait()


@pytest.fixture
def compose_config(tmp_path):
    """Compose conf/<name>.yaml with overrides, as `python -m prewrite.<name>` would; ${hydra:...}
    interpolations resolve as in a real run whose folder is tmp_path."""

    def _compose(name: str, *overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    return _compose


@pytest.fixture
def compose_train(compose_config):
    return lambda *overrides: compose_config("train", *overrides)


# Kills a training process (every rank) right after its first checkpoint is in place, before that
# checkpoint's metrics reach MLflow: run before `prewrite.train` (python -c, or a script under torchrun).
KILL_IN_WINDOW = """
import os, signal
from prewrite.loggers import CheckpointedMLFlowLogger
CheckpointedMLFlowLogger.flush = lambda self: os.kill(os.getpid(), signal.SIGKILL)
"""


def mlflow_histories(outputs, keys):
    """The MLflow runs of the default task's experiment in `outputs`, and the first one's history of each metric."""
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    return runs, {k: [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, k)] for k in keys}


def assert_same_histories(outputs, expected, **approx):
    """A resumed training logged one finished MLflow run with every step of `expected` exactly once, at the
    values `expected` holds (`approx`: pytest.approx's tolerances)."""
    runs, got = mlflow_histories(outputs, expected)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in expected:
        assert [s for s, _ in got[key]] == [s for s, _ in expected[key]], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in expected[key]], **approx), key


# A real training at its smallest: two GRPO steps of two rewrites, dev scored at every step.
TINY_TRAINING = [
    "steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=4",
    "algorithm.num_generations=2", "algorithm.max_completion_length=8",
    "save_checkpoints=false", "log_rewriter_to_mlflow=false", "trainer.enable_progress_bar=false",
    "system_metrics_interval_s=1",  # a tiny run lasts seconds; sample often enough to see system/ metrics
]  # fmt: skip


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory):
    """A real grid sweep on the joblib launcher (2 workers): three tiny trainings over loss_type, one
    of them invalid, into a fresh MLflow store. Shared by the sweep and the MLflow UI tests."""
    outputs = tmp_path_factory.mktemp("grid_sweep")
    cmd = [
        sys.executable, "-m", "prewrite.train", "-m", "hydra/launcher=parallel",
        "algorithm.loss_type=dapo,dr_grpo,bogus", *TINY_TRAINING, f"paths.outputs_dir={outputs}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc, MlflowClient(f"sqlite:///{outputs}/mlflow.db"), outputs


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A Llama of 2 layers, 64 wide, with seeded random weights and the embedded model's tokenizer and chat
    template, as a model folder. For the tests of machinery (resume after faults, strategies, sweeps), where
    what the models say does not matter: the embedded model's 135M parameters cost them most of their time
    and a 1.6 GB checkpoint each. TRL's own tests use tiny random models the same way."""
    from transformers import AutoConfig, LlamaForCausalLM

    embedded = model_zoo.resolve("embedded:smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(embedded)
    config.update(
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32}
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    model_zoo.load_tokenizer(embedded).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tiny_llama) -> list[str]:
    """Overrides that make both the rewriter and the task model the tiny Llama."""
    return [f"rewriter.model_name_or_path={tiny_llama}", f"task_backend.model_name_or_path={tiny_llama}"]

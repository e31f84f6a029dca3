"""Every option of every config group composes; the CLI lists groups and rejects unknown options."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from prewrite import runs
from tests.conftest import CONF, ROOT

# sweep and experiment options are global packages: sweeps composed in tests/test_sweep.py, experiments below;
# baselines is part of compare.yaml and search.yaml, not of training (composed in test_search_and_compare_...)
GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "sweep", "experiment", "baselines")
)
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
# Options with a mandatory (???) value, composed here with one; without it, see tests/test_task_jsonl.py.
REQUIRED = {("task", "jsonl"): ["task.path=rows.jsonl"]}


def test_every_group_has_options():
    expected = {"task", "reward", "algorithm", "rewriter", "task_backend", "rollout", "hardware", "logger", "paths"}
    assert expected <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(compose_train, group, option):
    cfg = compose_train(f"{group}={option}", *REQUIRED.get((group, option), []))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container[group] is not None
    missing = OmegaConf.missing_keys(cfg)
    assert not missing, f"{group}={option} leaves {missing} unset"


@pytest.mark.parametrize("name", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_experiment_sets_its_task_and_results_folder_for_train_and_compare(compose_config, name):
    for config in ("train", "compare"):
        cfg = compose_config(config, f"experiment={name}")
        container = OmegaConf.to_container(cfg, resolve=True)
        # an experiment is named after its task: <task>_<what it varies>
        assert name.startswith(container["task"]["name"] + "_") and container["steps"] % container["eval_every"] == 0
        assert container["results_dir"].endswith(f"experiments/{name}") and not OmegaConf.missing_keys(cfg)


@pytest.mark.parametrize("task, constrained", [("sst2", True), ("ag_news", True), ("gsm8k", False), ("nq_open", False)])
def test_the_hf_backend_scores_classification_by_label_and_decodes_the_rest(compose_train, task, constrained):
    from prewrite.backends import label_scoring
    from prewrite.tasks import load_task

    cfg = compose_train(f"task={task}")
    assert label_scoring(cfg.task_backend, load_task(cfg.task)) is constrained
    assert label_scoring(compose_train(f"task={task}", "task_backend.constrained=false").task_backend, None) is False
    with pytest.raises(ValueError, match="task_backend.constrained='yes'; expected true, false or auto"):
        label_scoring(compose_train("task_backend.constrained=yes").task_backend, None)


@pytest.mark.parametrize("config", ["compare", "search"])
def test_search_and_compare_compose_the_baselines_settings(compose_config, config):
    cfg = compose_config(config)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert {"ape", "opro", "gepa"} <= set(container) and container["max_new_tokens"] > 0


def test_unknown_option_lists_valid_ones(compose_train):
    with pytest.raises(MissingConfigException, match="task/nope"):
        compose_train("task=nope")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "prewrite.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_help_lists_groups_and_options():
    out = cli("--help")
    assert out.returncode == 0
    for group, option in OPTIONS:
        assert f"{group}:" in out.stdout and option in out.stdout


def test_cli_unknown_option_fails_with_available_options():
    out = cli("task=nope")
    assert out.returncode != 0
    assert "Could not find 'task/nope'" in out.stderr and "Available options in 'task'" in out.stderr
    assert "sst2" in out.stderr


def test_cli_cfg_job_prints_the_composed_config():
    out = cli("--cfg", "job", "algorithm.beta=0.1")
    assert out.returncode == 0
    printed = OmegaConf.create(out.stdout)
    assert printed.algorithm.beta == 0.1 and printed.task.name == "sst2_sentences"


@pytest.mark.parametrize("name", ["evaluate", "rewrite"])
def test_evaluate_and_rewrite_configs_compose(compose_config, name):
    cfg = compose_config(name, "rewriter_path=some/folder")
    assert OmegaConf.to_container(cfg, resolve=True)["rewriter_path"] == "some/folder"
    with pytest.raises(Exception, match="rewriter_path"):
        OmegaConf.to_container(compose_config(name), resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("name", ["evaluate", "probe", "rescore"])
def test_an_experiment_sets_the_tools_keys_and_each_tool_keeps_its_run_folder(compose_config, name):
    """The experiment is applied after the tool's own file: its dev rows (and evaluate's K and test rows)
    are the ones the tool uses, as in prewrite.compare; the run folder stays the tool's."""
    required = {"evaluate": "rewriter_path=x", "probe": "seed=0", "rescore": "run=x"}[name]
    plain = compose_config(name, required)
    tuned = compose_config(name, required, "experiment=ag_news_constrained")
    # train.yaml comes after the tool's file: a key of the same name there would silently replace the tool's
    own = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=False)
    composed = OmegaConf.to_container(plain, resolve=False)
    keys = set(own) - {"defaults", required.split("=")[0]}
    assert {k: composed[k] for k in keys} == {k: own[k] for k in keys}
    assert (plain.dev_examples, tuned.dev_examples) == (64, 128)
    if name == "evaluate":
        assert (plain.num_samples, tuned.num_samples) == (8, 20)
        assert (plain.test_examples, tuned.test_examples) == (None, 500)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run_dir = compose(config_name=name, overrides=[required, "task=trec"], return_hydra_config=True).hydra.run.dir
    folder = {"evaluate": "evals", "probe": "probes", "rescore": "rescores"}[name]
    assert f"/outputs/{folder}/trec/" in run_dir


def test_relaunch_in_a_run_folder_must_repeat_its_settings(compose_train, tmp_path):
    run_dir = tmp_path / "run"
    runs.check_same_settings(run_dir, compose_train("algorithm.beta=0.1"))
    recorded = json.loads((run_dir / runs.SETTINGS_FILE).read_text())
    assert recorded["algorithm.beta"] == "0.1" and not any(k.startswith("paths.") for k in recorded)
    # where outputs go and the progress bar may change; the method and the task may not
    same = compose_train("algorithm.beta=0.1", "trainer.enable_progress_bar=false", f"paths.outputs_dir={tmp_path}")
    runs.check_same_settings(run_dir, same)
    with pytest.raises(ValueError, match=r"algorithm\.beta: '0\.1' -> '0\.2'.*settings\.json"):
        runs.check_same_settings(run_dir, compose_train("algorithm.beta=0.2"))
    with pytest.raises(ValueError, match=r"task\.name: 'sst2_sentences' -> 'cb'"):
        runs.check_same_settings(run_dir, compose_train("algorithm.beta=0.1", "task=cb"))

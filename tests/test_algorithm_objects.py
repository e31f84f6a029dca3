"""The algorithm objects (prewrite.algorithms.updates), without a model."""

import pytest
import torch

from prewrite.algorithms.updates import GRPO, PPO, build_algorithm

GRPO_CFG = {"name": "grpo", "beta": 0.04}
PPO_CFG = {"name": "ppo", "kl_coef": 0.05, "adap_kl_ctrl": False}


def test_build_algorithm_picks_the_class_by_name_and_refuses_an_unknown_one():
    assert type(build_algorithm(GRPO_CFG)) is GRPO
    assert type(build_algorithm(PPO_CFG)) is PPO
    with pytest.raises(ValueError, match=r"algorithm.name='reinforce'; expected one of \['grpo', 'ppo'\]"):
        build_algorithm({"name": "reinforce"})


def test_kl_weight_says_whether_a_reference_is_needed():
    assert build_algorithm(GRPO_CFG).kl_weight == 0.04
    assert build_algorithm(GRPO_CFG | {"beta": 0.0}).kl_weight == 0
    assert build_algorithm(PPO_CFG).kl_weight == 0.05
    # an adaptive coefficient may move off a zero start: the reference is needed anyway
    assert build_algorithm(PPO_CFG | {"kl_coef": 0.0, "adap_kl_ctrl": True}).kl_weight == 1.0


def test_only_ppo_has_a_value_head_and_it_starts_at_zero():
    assert build_algorithm(GRPO_CFG).value_head(8) is None
    head = build_algorithm(PPO_CFG).value_head(8)
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (8, 1)
    assert not head.weight.any() and not head.bias.any()


def test_checkpoint_state_keeps_the_one_format_and_restores_ppos_kl_coefficient():
    assert build_algorithm(GRPO_CFG).state_dict() == {"kl_coef": None}
    ppo = build_algorithm(PPO_CFG)
    assert ppo.state_dict() == {"kl_coef": 0.05}
    ppo.load_state_dict({"rollout_step": 3, "kl_coef": 0.07})  # the checkpoint's whole `prewrite` dict
    assert ppo.kl_coef == 0.07 and ppo.state_dict() == {"kl_coef": 0.07}
    ppo.load_state_dict({"kl_coef": None})  # nothing saved: the coefficient stays
    assert ppo.kl_coef == 0.07

"""ORPO and SimPO as LLaMA-Factory 0.9.5 computes them, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune.trainer.stages.reference_free import answer_mean, odds_ratio_loss, pair_losses, simpo_loss

# Mean log-probs of the answers: p(chosen) = 1/2, p(rejected) = 1/4 per token on average.
CHOSEN = torch.tensor([math.log(0.5)])
REJECTED = torch.tensor([math.log(0.25)])


def test_odds_ratio_loss_is_sft_plus_beta_times_the_odds_ratio_term() -> None:
    # odds(chosen) = 0.5 / 0.5 = 1, odds(rejected) = 0.25 / 0.75 = 1/3: log odds ratio = log 3,
    # -logsigmoid(log 3) = log(1 + 1/3) = log(4/3); SFT term = -log(1/2) = log 2.
    expected = math.log(2) + 0.1 * math.log(4 / 3)  # 0.721915
    assert odds_ratio_loss(CHOSEN, REJECTED, beta=0.1).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.721915, abs=1e-6)


def test_simpo_loss_subtracts_the_target_margin_gamma() -> None:
    # beta (log 1/2 - log 1/4) - gamma = 2 log 2 - 0.5; -logsigmoid(x) = log(1 + e^-x) = log(1 + e^0.5 / 4).
    expected = math.log(1 + math.exp(0.5) / 4)  # 0.34513
    assert simpo_loss(CHOSEN, REJECTED, beta=2.0, gamma=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.34513, abs=1e-5)
    # No margin asked: plain -logsigmoid(beta x difference) = log(1 + 1/4).
    assert simpo_loss(CHOSEN, REJECTED, beta=2.0, gamma=0.0).item() == pytest.approx(math.log(1.25), abs=1e-6)


def test_answer_mean_averages_over_answer_tokens_only() -> None:
    per_token = torch.tensor([[0.0, -1.0, -2.0, -9.0], [0.0, 0.0, -3.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]])
    assert answer_mean(per_token, mask).tolist() == [-1.5, -3.0]


def test_pair_losses_dispatches_and_refuses_losses_that_need_a_reference() -> None:
    assert pair_losses("orpo", CHOSEN, REJECTED, 0.1, 0.5).item() == pytest.approx(0.721915, abs=1e-6)
    assert pair_losses("simpo", CHOSEN, REJECTED, 2.0, 0.5).item() == pytest.approx(0.34513, abs=1e-5)
    with pytest.raises(ValueError, match="sigmoid is not a reference-free loss"):
        pair_losses("sigmoid", CHOSEN, REJECTED, 0.1, 0.5)

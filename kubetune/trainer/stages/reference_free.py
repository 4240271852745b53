"""spec.preference.loss orpo and simpo: LLaMA-Factory 0.9.5's reference-free preference losses.

TRL 1.16's DPOTrainer has neither, and its loss step always scores the pair with a reference as well;
these losses need none. So the DPO stage's trainer replaces that step with `compute_loss` below: one
forward of the policy over [chosen; rejected], log-probabilities averaged over each answer's tokens
(LF's concatenated_forward for ipo/orpo/simpo), LF's odds_ratio_loss / simpo_loss, LF's pref_ftx, and the
metrics LF logs for them (rewards = beta x average log-prob, since there is no reference to compare with).
"""

from __future__ import annotations

from typing import Any

REFERENCE_FREE_NOTE = "reference model: none (preference.loss %s is reference-free, no reference forward)"


def odds_ratio_loss(chosen_logps: Any, rejected_logps: Any, beta: float) -> Any:
    """ORPO per pair (LF odds_ratio_loss): -log p(chosen) + beta x -logsigmoid(log odds chosen - log odds
    rejected), on length-averaged log-probabilities."""
    import torch
    import torch.nn.functional as F

    log_odds = (chosen_logps - rejected_logps) - (
        torch.log1p(-torch.exp(chosen_logps)) - torch.log1p(-torch.exp(rejected_logps))
    )
    return -chosen_logps + beta * -F.logsigmoid(log_odds)


def simpo_loss(chosen_logps: Any, rejected_logps: Any, beta: float, gamma: float) -> Any:
    """SimPO per pair (LF simpo_loss): -logsigmoid(beta x (chosen - rejected - gamma / beta))."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((chosen_logps - rejected_logps) - gamma / beta))


def answer_mean(per_token: Any, mask: Any) -> Any:
    """Each row's mean over its answer tokens (LF divides the summed log-probs by valid_length)."""
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1)


def pair_losses(loss: str, chosen_logps: Any, rejected_logps: Any, beta: float, simpo_gamma: float) -> Any:
    if loss == "orpo":
        return odds_ratio_loss(chosen_logps, rejected_logps, beta)
    if loss == "simpo":
        return simpo_loss(chosen_logps, rejected_logps, beta, simpo_gamma)
    raise ValueError(f"{loss} is not a reference-free loss (orpo, simpo)")


def compute_loss(
    trainer: Any, model: Any, inputs: dict[str, Any], loss: str, simpo_gamma: float, sft_weight: float
) -> Any:
    """The mean loss over the batch's pairs, logging LF's metrics into the DPOTrainer's own `_metrics`
    (its `log` hands them on to progress.jsonl and the status)."""
    mode = "train" if trainer.model.training else "eval"
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    model_kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
    outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
    shift_mask = completion_mask[..., 1:]
    per_token_logps = outputs.log_probs[:, -shift_mask.size(1) :]  # prompt-learning PEFT prepends virtual tokens
    logps = answer_mean(per_token_logps, shift_mask)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]

    losses = pair_losses(loss, chosen_logps, rejected_logps, trainer.beta, simpo_gamma)
    sft_loss = -chosen_logps
    if sft_weight > 1e-6:  # LF's pref_ftx threshold
        losses = losses + sft_weight * sft_loss

    gather = trainer.accelerator.gather
    chosen_rewards = trainer.beta * chosen_logps.detach()
    rejected_rewards = trainer.beta * rejected_logps.detach()
    metrics = trainer._metrics[mode]
    metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
    metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
    metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
    metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
    metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
    metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
    if loss == "orpo":
        metrics["sft_loss"].append(gather(sft_loss.detach()).mean().item())
        odds_ratio = (losses.detach() - sft_loss.detach()) / trainer.beta  # as LF logs it, pref_ftx included
        metrics["odds_ratio_loss"].append(gather(odds_ratio).mean().item())
    if mode == "train":
        tokens = gather(inputs["attention_mask"].sum()).sum().item()
        trainer._total_train_tokens += tokens // trainer._tp_size
    metrics["num_tokens"] = [trainer._total_train_tokens]
    return losses.mean()

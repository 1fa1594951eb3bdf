"""The lab's own small training loop, for models trained on synthetic batches in the lab's experiments.

It is the loop of gpt/trainer.py with everything a real run needs and an experiment does not (corpora,
checkpoints, resuming, several processes) left out: the same model, the same optimizer and learning-rate
schedule (gpt/optim.py), and a callback every `eval_interval` steps where the experiment takes its
measurements.
"""

from __future__ import annotations

from typing import Callable

import torch

from gpt.optim import learning_rate_at, make_optimizer, set_learning_rate


def train(model: torch.nn.Module, cfg, next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          measure: Callable[[int], None], grad_clip: float = 1.0) -> None:
    """Train `model` for cfg.max_iters steps on next_batch(step) -> (x, y); call measure(step) at step 0, every
    cfg.eval_interval steps, and after the last step. cfg carries the settings gpt/optim.py reads."""
    optimizer = make_optimizer(model, cfg)
    for step in range(cfg.max_iters + 1):
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            model.eval()
            measure(step)
            model.train()
        if step == cfg.max_iters:
            break
        set_learning_rate(optimizer, learning_rate_at(step, cfg))  # (Muon's groups step at their multiple of it)
        x, y = next_batch(step)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

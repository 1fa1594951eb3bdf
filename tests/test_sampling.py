"""From logits to a token (gpt/sampling.py): temperature, the top-k and top-p masks, greedy and seeded picks."""

from __future__ import annotations

import pytest
import torch

from gpt.sampling import next_token_probs, sample, top_k_filter, top_p_filter


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 9.0, 8.0, 7.0]])
    kept = top_k_filter(logits, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False], [False, False, True, True, False]]
    assert kept[0, 1] == 5.0 and kept[1, 3] == 8.0  # kept logits unchanged
    assert torch.isfinite(top_k_filter(logits, 99)).all()  # k beyond the vocabulary keeps everything


@pytest.mark.parametrize("p, kept", [(1e-9, 1), (0.5, 1), (0.50001, 2), (0.8, 2), (0.80001, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([[0.3, 0.5, 0.05, 0.15]])  # sorted: 0.5, 0.3, 0.15, 0.05
    filtered = top_p_filter(probs.log(), p)
    assert int(torch.isfinite(filtered).sum()) == kept
    order = [1, 0, 3, 2]  # most likely first
    assert torch.isfinite(filtered[0, order[:kept]]).all()


def test_next_token_probs_temperature_and_filters():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    for t in (0.5, 1.0, 2.0):
        torch.testing.assert_close(next_token_probs(logits, t).sum(-1), torch.ones(3))
    sharp, flat = next_token_probs(logits, 0.5), next_token_probs(logits, 2.0)
    assert (sharp.max(-1).values > flat.max(-1).values).all()
    greedy = next_token_probs(logits, 0.0)
    assert greedy.sum(-1).tolist() == [1.0] * 3 and (greedy.argmax(-1) == logits.argmax(-1)).all()
    assert ((next_token_probs(logits, 1.0, top_k=5) > 0).sum(-1) == 5).all()
    nucleus = next_token_probs(logits, 1.0, top_p=0.5)
    torch.testing.assert_close(nucleus.sum(-1), torch.ones(3))
    assert ((nucleus > 0).sum(-1) < 50).all()


def test_sample_is_greedy_at_zero_and_reproducible_with_a_seed():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    assert sample(logits, 0.0).tolist() == logits.argmax(-1).tolist()
    assert sample(logits, 1.0, top_k=1).tolist() == logits.argmax(-1).tolist()
    assert sample(logits, 1.0, top_p=1e-6).tolist() == logits.argmax(-1).tolist()
    draws = [sample(logits.repeat(50, 1), 1.0, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert draws[0].tolist() == draws[1].tolist() and draws[0].tolist() != draws[2].tolist()

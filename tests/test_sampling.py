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


def test_a_batch_with_settings_per_row_draws_what_each_row_draws_alone():
    # A server's batch: rows of different requests, each with its own settings and seeded stream. One call for
    # all of them must give every row exactly the token the per-row call gives it.
    torch.manual_seed(1)
    logits = torch.randn(6, 500) * 3
    settings = [(0.8, 0, 1.0), (1.0, 20, 1.0), (0.7, 0, 0.9), (1.2, 50, 0.5), (0.0, 0, 1.0), (1.0, 5, 0.95)]
    temperature, top_k, top_p = (list(column) for column in zip(*settings))
    for seed in range(5):
        batched = sample(logits, temperature, top_k, top_p,
                         [torch.Generator().manual_seed(seed * 10 + b) for b in range(6)])
        alone = [int(sample(logits[b : b + 1], *settings[b], [torch.Generator().manual_seed(seed * 10 + b)])[0])
                 for b in range(6)]
        assert batched.tolist() == alone


def test_the_draws_are_torch_multinomials():
    # The pick is multinomial's own (an exponential per token, argmax of p / E), written out to batch the rows:
    # the same seed gives the same tokens as torch.multinomial, with one stream for the batch or one per row.
    torch.manual_seed(2)
    logits = torch.randn(4, 1000)
    probs = next_token_probs(logits, 0.9, top_k=100)
    one = sample(logits, 0.9, top_k=100, generator=torch.Generator().manual_seed(7))
    assert one.tolist() == torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7))[:, 0].tolist()
    per_row = sample(logits, 0.9, top_k=100, generator=[torch.Generator().manual_seed(s) for s in range(4)])
    assert per_row.tolist() == [int(torch.multinomial(probs[b : b + 1], 1, generator=torch.Generator().manual_seed(b)))
                                for b in range(4)]


def sorted_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The nucleus by sorting the whole vocabulary: what top_p_filter must keep (the reference)."""
    probs = torch.softmax(logits, dim=-1)
    top, order = torch.sort(probs, dim=-1, descending=True)
    drop = torch.cumsum(top, dim=-1) - top >= p
    drop[..., 0] = False
    return torch.zeros_like(drop).scatter_(-1, order, ~drop)


@pytest.mark.parametrize("scale", [0.1, 1.0, 8.0])  # flat (nucleus past the first candidates) to peaked
def test_top_p_without_a_full_sort_keeps_what_sorting_keeps(scale):
    torch.manual_seed(3)
    logits = torch.randn(5, 3000) * scale
    for p in (0.3, 0.9, 0.99):
        assert torch.equal(torch.isfinite(top_p_filter(logits, p, first=16)), sorted_top_p(logits, p))
    mixed = top_p_filter(logits, [0.3, 1.0, 0.9, 0.99, 0.5], first=16)  # one p per row; 1.0 keeps the row
    assert torch.isfinite(mixed[1]).all()
    for b, p in ((0, 0.3), (2, 0.9), (4, 0.5)):
        assert torch.equal(torch.isfinite(mixed[b]), sorted_top_p(logits[b], p))


def test_top_k_per_row():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 9.0, 8.0, 7.0], [3.0, 2.0, 1.0, 0.0, -1.0]])
    kept = torch.isfinite(top_k_filter(logits, [1, 3, 0]))  # 0: off
    assert kept.sum(-1).tolist() == [1, 3, 5] and kept[0, 1] and kept[1, 2:].all()

"""The model: shapes, causality, loss at initialisation, overfitting one batch, the KV cache, bad input."""

import math

import pytest
import torch

from gpt.model import GPT, GPTConfig, KVCache


def tiny(**overrides) -> GPT:
    config = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    config.update(overrides)
    return GPT(GPTConfig(**config))


def test_shapes_with_and_without_targets():
    model = tiny()
    idx = torch.randint(0, 37, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 37) and loss.shape == ()
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 37) and loss is None
    logits, _ = model(idx, all_logits=True)
    assert logits.shape == (3, 10, 37)


def test_last_position_logits_equal_full_forward():
    model = tiny().eval()
    idx = torch.randint(0, 37, (2, 12))
    last, _ = model(idx)
    full, _ = model(idx, all_logits=True)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_causal_changing_a_later_token_never_changes_earlier_logits():
    model = tiny().eval()
    idx = torch.randint(0, 37, (1, 16))
    changed = idx.clone()
    changed[0, 9] = (changed[0, 9] + 1) % 37
    a, _ = model(idx, all_logits=True)
    b, _ = model(changed, all_logits=True)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_loss_at_init_is_close_to_uniform():
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=500, block_size=32, n_layer=2, n_head=2, n_embd=64))
    x = torch.randint(0, 500, (8, 32))
    y = torch.randint(0, 500, (8, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - math.log(500)) < 0.1


def test_ignored_targets_leave_the_loss():
    model = tiny().eval()
    x = torch.randint(0, 37, (2, 8))
    y = torch.randint(0, 37, (2, 8))
    masked = y.clone()
    masked[:, :4] = -1
    logits, loss = model(x, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 37), y[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_two_layer_model_overfits_one_batch():
    torch.manual_seed(0)
    model = tiny(vocab_size=20, block_size=16, n_embd=48)
    x = torch.randint(0, 20, (4, 16))
    y = torch.randint(0, 20, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_weights_are_tied_and_residual_projections_scaled():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    std_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(16)) < 0.001


def test_param_count_and_flops():
    model = tiny()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - 16 * 32
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 32 * 16


def test_gpt2_small_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    assert model.num_params(non_embedding=False) == 124_439_808


@pytest.mark.parametrize("chunks", [[12], [5, 4, 1, 1, 1], [1] * 12, [3, 9]])
def test_kv_cache_matches_full_forward(chunks):
    model = tiny().eval()
    idx = torch.randint(0, 37, (3, 12))
    full, _ = model(idx, all_logits=True)
    cache = model.new_kv_cache(batch_size=3)
    outputs, start = [], 0
    for n in chunks:
        logits, _ = model(idx[:, start : start + n], kv_cache=cache, all_logits=True)
        outputs.append(logits)
        start += n
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_rows_of_different_lengths_match_each_row_alone():
    # Three sequences of 3, 9 and 6 tokens filled row by row (through row views), then two steps together:
    # each row's logits are those of its own sequence run alone, and no row sees another row's keys.
    model = tiny().eval()
    seqs = [torch.randint(0, 37, (1, n)) for n in (3, 9, 6)]
    cache = model.new_kv_cache(batch_size=3)
    for row, seq in enumerate(seqs):
        model(seq, kv_cache=cache.rows_view(row, row + 1))
    assert cache.lengths.tolist() == [3, 9, 6]
    cache.length = 9
    for step in range(2):
        new = torch.randint(0, 37, (3, 1))
        logits, _ = model(new, kv_cache=cache)
        for row in range(3):
            seqs[row] = torch.cat([seqs[row], new[row : row + 1]], dim=1)
            alone, _ = model(seqs[row])
            torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [5, 11, 8] and cache.length == 11


def test_kv_cache_reset_and_overflow():
    model = tiny().eval()
    cache = model.new_kv_cache(batch_size=1)
    assert isinstance(cache, KVCache) and cache.capacity == 16
    model(torch.zeros(1, 16, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="16 cached \\+ 1 new tokens is longer than block_size \\(16\\)"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    cache.reset()
    model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    assert cache.length == 1


def test_bad_input_names_the_values():
    model = tiny()
    with pytest.raises(ValueError, match="token id 37 is out of range for vocab_size 37"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="sequence of 17 tokens is longer than block_size \\(16\\)"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="n_embd \\(30\\) must be divisible by n_head \\(4\\)"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be at least 1"):
        GPTConfig(n_layer=0)


def test_dropout_is_active_only_in_training():
    model = tiny(dropout=0.5)
    idx = torch.randint(0, 37, (2, 8))
    model.train()
    a, _ = model(idx, all_logits=True)
    b, _ = model(idx, all_logits=True)
    assert not torch.equal(a, b)
    model.eval()
    a, _ = model(idx, all_logits=True)
    b, _ = model(idx, all_logits=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("cached", [False, True])
def test_plain_attention_equals_the_fused_kernel(cached):
    model = tiny().eval()
    idx = torch.randint(0, 37, (2, 12))
    fused, _ = model(idx, all_logits=True)
    for block in model.transformer.h:
        block.attn.plain = True
    if cached:  # a prefill of 7 tokens, then 5 more in one call (the masked cache path)
        cache = model.new_kv_cache(2)
        model(idx[:, :7], kv_cache=cache)
        plain, _ = model(idx[:, 7:], kv_cache=cache, all_logits=True)
        fused = fused[:, 7:]
    else:
        plain, _ = model(idx, all_logits=True)
    torch.testing.assert_close(plain, fused, atol=1e-5, rtol=1e-5)
    weights = model.transformer.h[0].attn.weights  # [B, nh, T, L]
    assert weights.shape == (2, 2, 5 if cached else 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    if not cached:  # nothing above the diagonal: no position looks ahead
        assert torch.all(weights.triu(diagonal=1) == 0)


def test_attention_only_blocks_have_no_mlp():
    model = tiny(attention_only=True)
    assert all(block.mlp is None and block.ln_2 is None for block in model.transformer.h)
    assert not any("mlp" in name for name, _ in model.named_parameters())
    idx = torch.randint(0, 37, (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, 37) and torch.isfinite(loss)

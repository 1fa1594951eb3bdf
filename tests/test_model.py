"""The model: shapes, causality, loss at initialisation, overfitting one batch, the KV cache, bad input."""

import math

import pytest
import torch

from gpt.model import ARCHITECTURES, GPT, GPTConfig, KVCache, Rotary, make_norm, rotate


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


def test_param_count_leaves_out_the_lookups():
    model = tiny()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - 16 * 32  # the position embedding; the tied token embedding is the head


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


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_simple_cache_prefill_then_step_equals_an_uncached_forward(position):
    # The learner's cache: a prefill of 6 tokens, a step of 3 (causal inside the step, after the cache:
    # the explicit mask) and a step of 1, against one forward pass over all 10 tokens.
    model = tiny(position=position).eval()
    idx = torch.randint(0, 37, (2, 10))
    full, _ = model(idx, all_logits=True)
    cache = model.new_kv_cache(batch_size=2)
    assert isinstance(cache, KVCache)
    prefill, _ = model(idx[:, :6], kv_cache=cache, all_logits=True)
    step3, _ = model(idx[:, 6:9], kv_cache=cache, all_logits=True)
    step1, _ = model(idx[:, 9:], kv_cache=cache)
    torch.testing.assert_close(torch.cat([prefill, step3, step1], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 10


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


# ---------------------------------------------------------------------------------------------------
# The options since GPT-2 (each against a plain reference where there is one)

OPTIONS = [
    dict(position="rope"), dict(norm="rmsnorm"), dict(mlp="relu2"), dict(mlp="swiglu"), dict(qk_norm=True),
    dict(tie_embeddings=False), dict(zero_init=True), dict(logit_softcap=5.0), ARCHITECTURES["modern"],
    dict(ARCHITECTURES["modern"], mlp="swiglu", logit_softcap=10.0, bias=False, attention_only=True),
]


def randomized(model: GPT) -> GPT:
    """Every weight random (zero-initialised projections would make the checks below trivially true)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def test_rope_scores_depend_only_on_relative_position():
    # Shifting every position by the same amount leaves every attention score unchanged.
    torch.manual_seed(0)
    model = randomized(tiny(position="rope", block_size=32))
    attn = model.transformer.h[0].attn
    attn.plain = True
    x = torch.randn(2, 8, 32)
    weights = []
    for shift in (0, 5, 24):
        attn(x, rope=model.rotary(torch.arange(shift, shift + 8)))
        weights.append(attn.weights)
    torch.testing.assert_close(weights[1], weights[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights[2], weights[0], atol=1e-5, rtol=1e-4)
    # ...while the scores do depend on the distance between query and key: no longer a bag of tokens.
    same = torch.randn(1, 1, 32).expand(1, 8, 32)
    attn(same, rope=model.rotary(torch.arange(8)))
    assert not torch.allclose(attn.weights[0, 0, -1], torch.full((8,), 1 / 8), atol=1e-3)
    # A rotation never changes a vector's length.
    q = torch.randn(1, 2, 8, 16)
    turned = rotate(q, model.rotary(torch.arange(8)))
    torch.testing.assert_close(turned.norm(dim=-1), q.norm(dim=-1))


def test_rmsnorm_follows_its_formula():
    norm = make_norm(GPTConfig(norm="rmsnorm", n_embd=8, n_head=1), 8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = 3 * torch.randn(4, 5, 8) + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert not any(name.endswith("bias") for name, _ in norm.named_parameters())


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_keeps_the_kv_cache_exact_and_the_model_causal(options):
    torch.manual_seed(0)
    model = randomized(tiny(**options))
    idx = torch.randint(0, 37, (2, 12))
    full, _ = model(idx, all_logits=True)
    cache = model.new_kv_cache(batch_size=2)
    chunks = [model(idx[:, a:b], kv_cache=cache, all_logits=True)[0] for a, b in ((0, 5), (5, 9), (9, 10), (10, 12))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-4, rtol=1e-4)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 37
    torch.testing.assert_close(model(changed, all_logits=True)[0][:, :7], full[:, :7])
    # Greedy decoding with the cache picks exactly the tokens that recomputing every window picks.
    from gpt.decoding import generate_tokens

    def greedy(use_kv_cache):
        return [t.tolist() for t in generate_tokens(model, idx[:, :3], 30, temperature=0.0, use_kv_cache=use_kv_cache)]

    assert greedy(True) == greedy(False)
    for block in model.transformer.h:  # the plain attention path (gpt/lab) agrees with the fused kernel
        block.attn.plain = True
    torch.testing.assert_close(model(idx, all_logits=True)[0], full, atol=1e-4, rtol=1e-4)


def test_rotate_turns_each_channel_pair_by_position_times_frequency():
    rotary = Rotary(head_size=4, block_size=8)
    x = torch.randn(1, 1, 8, 4)
    turned = rotate(x, rotary(torch.arange(8)))
    for pos in (0, 3, 7):
        for pair, freq in enumerate((1.0, 0.01)):  # 10000 ** (-2 pair / 4)
            a = pos * freq
            x0, x1 = x[0, 0, pos, 2 * pair], x[0, 0, pos, 2 * pair + 1]
            expected = torch.stack([x0 * math.cos(a) - x1 * math.sin(a), x0 * math.sin(a) + x1 * math.cos(a)])
            torch.testing.assert_close(turned[0, 0, pos, 2 * pair : 2 * pair + 2], expected)


def test_option_details():
    torch.manual_seed(0)
    zero = tiny(zero_init=True, tie_embeddings=False)
    assert all(torch.all(block.attn.c_proj.weight == 0) and torch.all(block.mlp.c_proj.weight == 0)
               for block in zero.transformer.h)
    x = torch.randint(0, 37, (2, 8))
    assert zero(x, x)[1].item() == pytest.approx(math.log(37))  # zero head: a uniform first guess
    untied = tiny(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    # Embeddings are lookups: an untied model counts its head but not its token embedding in num_params.
    assert untied.num_params() == sum(p.numel() for p in untied.parameters()) - 16 * 32 - 37 * 32
    rope = tiny(position="rope")
    assert "transformer.wpe.weight" not in rope.state_dict() and not any("rotary" in k for k in rope.state_dict())
    capped = randomized(tiny(logit_softcap=2.0))
    with torch.no_grad():
        capped.lm_head.weight.mul_(20)
    logits, _ = capped(x, all_logits=True)
    capped.config.logit_softcap = 0.0
    raw, _ = capped(x, all_logits=True)
    assert raw.abs().max() > 4 and logits.abs().max() < 2
    torch.testing.assert_close(logits, 2 * torch.tanh(raw / 2))
    swiglu = tiny(mlp="swiglu", n_embd=96, n_head=2)
    assert isinstance(swiglu.transformer.h[0].mlp.c_gate, torch.nn.Linear)  # LoRA wraps Linear layers
    mlp_weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".mlp." in n)  # noqa: E731
    assert abs(mlp_weights(swiglu) / mlp_weights(tiny(n_embd=96, n_head=2)) - 1) < 0.05
    qk = tiny(qk_norm=True)
    assert isinstance(qk.transformer.h[0].attn.q_norm, torch.nn.LayerNorm)  # the model's norm, per head
    assert qk.transformer.h[0].attn.q_norm.weight.shape == (16,)


@pytest.mark.parametrize("changes, words", [
    (dict(position="rope", n_embd=30, n_head=2), ["position = 'rope'", "head size", "15"]),
    (dict(mlp="swish"), ["mlp must be one of", "'swish'"]),
    (dict(norm="batchnorm"), ["norm must be one of"]),
    (dict(logit_softcap=-1.0), ["logit_softcap"]),
])
def test_bad_options_name_the_setting(changes, words):
    with pytest.raises(ValueError) as info:
        tiny(**changes)
    for word in words:
        assert word in str(info.value)

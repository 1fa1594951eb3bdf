"""The model: a decoder-only Transformer that reads token ids and predicts the next token at every position.

Its place in the flow: text → tokens → batches → model → loss → optimizer → checkpoint → sampling/decoding.
Batches of token ids x [B, T] come in (gpt/batches.py); logits [B, T, vocab_size] go out, and with targets
y (x shifted by one) the cross-entropy loss that training (gpt/trainer.py) minimises. Decoding
(gpt/decoding.py) calls the same forward with a KV cache, one new token at a time.

    ids ─▶ token embedding (+ position embedding) ─▶ n_layer x Block ─▶ norm ─▶ LM head ─▶ logits
    Block:  x = x + attention(norm(x));  x = x + MLP(norm(x))          ("pre-norm")

GPTConfig's own defaults are GPT-2's architecture (learned positions, GELU, a tied head), so GPT-2's weights
load into it (gpt/hf.py). Each change found since to buy a lower loss for the same compute (Llama, the
modded-nanogpt speedrun, nanochat) is an option with a small branch below that says what it buys.
ARCHITECTURES names two sets: "gpt2" (none) and "modern" (RoPE, ReLU², QK-norm, an untied head, zero init),
the one `python train.py` builds by default (BENCHMARKS.md).

Shapes in the comments: B batch size, T sequence length, C = n_embd (channels), nh = n_head,
hs = head size = C / nh, V = vocab_size, L = number of positions held in the KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # number of distinct tokens (GPT-2: 50,257)
    block_size: int = 1024  # longest sequence the model reads: the number of learned positions
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms, as GPT-2 has
    attention_only: bool = False  # blocks without the MLP: the small models of the induction-heads studies
    # The options since GPT-2; each default is GPT-2's.
    position: str = "learned"  # "learned": a trained vector added per position (GPT-2); "rope": rotary (Rotary)
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (make_norm)
    mlp: str = "gelu"  # the MLP's nonlinearity: "gelu" (GPT-2), "relu2" or "swiglu" (MLP)
    qk_norm: bool = False  # normalise each head's queries and keys (CausalSelfAttention)
    tie_embeddings: bool = True  # the LM head is the token embedding matrix (GPT-2), or a matrix of its own
    zero_init: bool = False  # the layers that write into the residual stream (and an untied head) start at zero
    logit_softcap: float = 0.0  # above 0: logits = cap * tanh(logits / cap) (GPT.logits)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("position", "learned, rope"), ("norm", "layernorm, rmsnorm"),
                              ("mlp", "gelu, relu2, swiglu")):
            if getattr(self, name) not in choices.split(", "):
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"position = 'rope' turns pairs of channels: the head size n_embd / n_head must be even, "
                             f"got {self.n_embd // self.n_head}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap must not be negative (0 = off), got {self.logit_softcap}")


# Named sets of the options: GPT-2 exactly, and the best combination measured here (BENCHMARKS.md).
ARCHITECTURES = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", qk_norm=False, tie_embeddings=True,
                 zero_init=False, logit_softcap=0.0),
    "modern": dict(position="rope", norm="layernorm", mlp="relu2", qk_norm=True, tie_embeddings=False,
                   zero_init=True, logit_softcap=0.0),
}


def make_norm(config: GPTConfig, size: int) -> nn.Module:
    """LayerNorm (GPT-2) subtracts the mean, divides by the standard deviation, then scales (and shifts).
    RMSNorm (Zhang & Sennrich 2019; Llama) only divides by the root mean square and scales: one reduction
    fewer, cheaper on GPUs; on a CPU torch runs it as several operations, 3.3x slower than its fused
    LayerNorm, which is why "modern" keeps LayerNorm (BENCHMARKS.md)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=1e-5)
    return nn.LayerNorm(size, bias=config.bias)


Turn = tuple[torch.Tensor, torch.Tensor]  # RoPE's cos and sin of every channel pair's angle at some positions


class Rotary(nn.Module):
    """Rotary position embedding (RoPE; Su et al. 2021, in Llama and most models since): instead of adding a
    learned vector per position to the input, turn each pair of channels of every query and key by an angle
    proportional to the token's position, each pair at its own frequency. The score of a query at position m
    with a key at position n then depends on m - n only: attention sees relative positions, and no position
    weights are learned."""

    def __init__(self, head_size: int, block_size: int, base: float = 10000.0):
        super().__init__()
        freqs = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # [hs/2], fast to slow
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), freqs)  # [block_size, hs/2]
        # Computed from the config, not learned: kept out of the state_dict (persistent=False).
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, pos: torch.Tensor) -> Turn:
        # pos [T] or [B, T] -> cos and sin of each pair's angle, [1, T, hs/2] or [B, 1, T, hs/2]: one for all heads
        return self.cos[pos].unsqueeze(-3), self.sin[pos].unsqueeze(-3)


def rotate(x: torch.Tensor, turn: Turn) -> torch.Tensor:
    """x [B, nh, T, hs], its channels taken in pairs (x0, x1), each pair turned by its angle (Rotary's cos, sin)."""
    cos, sin = turn
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, nh, T, hs/2] each
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).type_as(x)


class KVCache:
    """The keys and values of the tokens seen so far, per layer, so that a step feeds the model only its new
    tokens: the earlier tokens' keys and values never change (attention is causal; with RoPE each key is stored
    already turned by its own position). The model calls `positions(T)`, then `update(layer, k, v)` in each
    layer, and reads `length`. Here all rows have one length; gpt/decoding.py's RaggedKVCache answers the same
    calls for rows of different lengths (a server's requests)."""

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=None):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)  # [B, nh, block_size, hs]
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length, self.capacity = 0, config.block_size  # positions 0..length-1 are filled

    def positions(self, T: int) -> torch.Tensor:
        """The positions of a forward pass's T new tokens, pos [T]: they continue the cached sequence."""
        self.start, self.length = self.length, self.length + T
        return torch.arange(self.start, self.length, device=self.keys[0].device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store one layer's new k, v [B, nh, T, hs] after the cached ones. Returns every key and value so far,
        [B, nh, L, hs] each (L = length), and the mask [T, L] of the keys each query may see (None: causal)."""
        start, end = self.start, self.length
        self.keys[layer][:, :, start:end], self.values[layer][:, :, start:end] = k, v
        mask = None
        if start > 0 and end - start > 1:  # query t sees keys 0..start+t; SDPA's is_causal would stop it at t
            mask = torch.arange(end, device=k.device) <= torch.arange(start, end, device=k.device)[:, None]
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end], mask

    def reset(self) -> None:
        self.length = 0


def plain_attention(q, k, v, mask: torch.Tensor | None = None, dropout: float = 0.0):
    """Attention written out: what F.scaled_dot_product_attention computes in one fused kernel. q [B, nh, T, hs],
    k, v [B, nh, L, hs]; mask [T, L] is True where query i may see key j (None: causal, the queries being the last
    T of the L positions). Returns the output [B, nh, T, hs] and the weights [B, nh, T, L] (rows sum to 1)."""
    T, L = q.shape[-2], k.shape[-2]
    if mask is None:
        mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, nh, T, L]: how well each query matches each key
    att = att.masked_fill(~mask, float("-inf"))  # no looking ahead: those weights become exactly 0
    att = att.softmax(dim=-1)
    return F.dropout(att, dropout) @ v, att  # a weighted average of the values


class CausalSelfAttention(nn.Module):
    """Each position mixes in information from itself and earlier positions, weighted by relevance."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # Queries, keys and values of all heads come from one matmul (GPT-2 names it c_attn).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm (Dehghani et al. 2023; OLMo 2, modded-nanogpt): normalising each head's queries and keys (with
        # the model's norm) bounds the attention scores: a large learning rate cannot turn the softmax one-hot.
        hs = config.n_embd // config.n_head
        self.q_norm, self.k_norm = (make_norm(config, hs), make_norm(config, hs)) if config.qk_norm else (None, None)
        # plain=True computes attention with plain_attention and keeps its weights in self.weights, for
        # looking inside the model (gpt/lab); training and sampling use the fused kernel.
        self.plain = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: Turn | None = None,
                mask: torch.Tensor | None = None):
        B, T, C = x.shape
        qkv = self.c_attn(x)  # [B, T, 3C]: queries, keys and values of all heads side by side
        # Split into q, k, v and the channels into heads: [B, T, 3, nh, hs] -> 3 x [B, nh, T, hs]
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # the turns for these tokens' positions (GPT.forward)
            q, k = rotate(q, rope), rotate(k, rope)

        # mask [B, 1, T, T]: True where a query may see a key (GPT.forward's); None: causal, the fast path
        if cache is not None:  # keep the new keys and values; attend over all L held so far
            k, v, mask = cache.update(layer, k, v)  # [B, nh, L, hs] twice; mask [T, L], [B, 1, T, L] or None

        dropout = self.dropout if self.training else 0.0
        if self.plain:
            y, self.weights = plain_attention(q, k, v, mask, dropout)
        else:
            # The same softmax(q @ k^T / sqrt(hs)) @ v as plain_attention, fused (flash attention where available).
            # is_causal lines query 0 up with key 0: right when L == T; one query after a cache sees every key.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: [B, T, C]
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """A per-position two-layer network, 4x as wide inside: where most of the parameters live.

    The nonlinearity: "gelu" is GPT-2's (GELU's tanh approximation). "relu2" is relu(h)^2 (So et al. 2021,
    "Primer"; modded-nanogpt): sparse and cheap. "swiglu" (Shazeer 2020; Llama) gates the hidden units with a
    third matrix, silu(gate(x)) * fc(x), 2/3 as wide so that the three hold as many weights as GELU's two.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        C, hidden = config.n_embd, 4 * config.n_embd
        self.kind = config.mlp
        if self.kind == "swiglu":
            hidden = 64 * math.ceil(8 * C / 3 / 64)  # 2/3 of 4C, rounded up to a multiple of 64
            self.c_gate = nn.Linear(C, hidden, bias=config.bias)
        self.c_fc = nn.Linear(C, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # [B, T, C] -> [B, T, 4C]
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.c_gate(x)) * h
        return self.dropout(self.c_proj(h))  # [B, T, 4C] -> [B, T, C]


class Block(nn.Module):
    """One Transformer layer: attention to communicate between positions, then an MLP to compute."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = None if config.attention_only else make_norm(config, config.n_embd)
        self.mlp = None if config.attention_only else MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: Turn | None = None,
                mask: torch.Tensor | None = None):
        # Each sub-layer adds to the residual stream x rather than replacing it, which keeps deep
        # stacks trainable: gradients flow straight through the additions.
        x = x + self.attn(self.ln_1(x), cache, layer, rope, mask)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.vocab_size, config.n_embd)))  # id -> vector
        self.rotary = None
        if config.position == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # position 0..block_size-1
        else:
            self.rotary = Rotary(config.n_embd // config.n_head, config.block_size)
        self.transformer.update(dict(drop=nn.Dropout(config.dropout), h=nn.ModuleList(
            Block(config) for _ in range(config.n_layer)), ln_f=make_norm(config, config.n_embd)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying: the LM head scores each token by the dot product of the final hidden state with
            # that token's embedding. One matrix, used at both ends, as in GPT-2. Untied (modded-nanogpt,
            # nanochat), the input and the output each get the matrix that suits them, for V x C more weights.
            self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the layers that write into the residual stream by 1/sqrt(2 * n_layer): each
        # layer adds two of them, so the stream's variance stays the same however deep the model. zero_init
        # (modded-nanogpt) starts them at 0 instead: every block starts as the identity, and (with an untied head)
        # the first prediction is uniform, so the first steps are not spent undoing random writes.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or (name == "lm_head.weight" and not config.tie_embeddings):
                if config.zero_init:
                    nn.init.zeros_(p)
                elif name != "lm_head.weight":
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                all_logits: bool = False, pos: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for the next token at each position of idx [B, T], and the loss when targets [B, T] are given.

        Targets equal to -1 are left out of the loss (e.g. prompt tokens when fine-tuning on answers).
        Without targets only the last position's logits are computed ([B, 1, V]), which is all sampling
        needs, unless all_logits is set. With a kv_cache, idx holds only the new tokens; they continue
        the sequence stored in the cache (which gives their positions and mask). Else pos [B, T] and mask
        [B, 1, T, T] (True where query i may see key j) may be given, for documents packed in a row, each from
        position 0 and seeing only itself (gpt/post/chat_data.py); by default 0..T-1, causal.
        """
        B, T = idx.shape
        self._check_input(idx, 0 if kv_cache is None else kv_cache.length)
        if kv_cache is not None:  # pos [T], or [B, T] when rows differ in length: continuing the cached sequence
            pos = kv_cache.positions(T)
        elif pos is None:
            pos = torch.arange(T, device=idx.device)  # [T]
        x = self.transformer.wte(idx)  # [B, T, C]
        rope = None if self.rotary is None else self.rotary(pos)  # cos, sin: how far every layer turns q and k
        if rope is None:
            x = x + self.transformer.wpe(pos)  # [B, T, C] + [T, C] or [B, T, C] -> [B, T, C]
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer, rope, mask)  # [B, T, C]
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.logits(x)  # [B, T, V]
            # Cross-entropy = -log(probability the model gave to the true next token), averaged.
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-1)
            return logits, loss
        if not all_logits:
            x = x[:, -1:, :]  # [B, 1, C]: the next token after the sequence
        return self.logits(x), None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head: final hidden states [..., C] -> one score per vocabulary entry [..., V]."""
        logits, cap = self.lm_head(x), self.config.logit_softcap
        if cap:  # soft-capping (Gemma 2; modded-nanogpt): a smooth clamp into (-cap, cap) against overconfidence
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _check_input(self, idx: torch.Tensor, start: int) -> None:
        if start + idx.shape[1] > self.config.block_size:
            what = f"{start} cached + {idx.shape[1]} new tokens" if start else f"a sequence of {idx.shape[1]} tokens"
            raise ValueError(f"{what} is longer than block_size ({self.config.block_size})")
        # Out-of-range ids would otherwise fail deep inside the embedding (or silently, on some devices). The
        # check reads the values on the host, so torch.compile's graph skips it.
        if not torch.compiler.is_compiling() and idx.numel() > 0:
            low, high = (int(v) for v in torch.aminmax(idx))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token id {low if low < 0 else high} is out of range for vocab_size "
                                 f"{self.config.vocab_size}")

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. Embeddings are lookups, not matmuls, so FLOP counts leave them out: the position
        embedding, and the token embedding unless it is tied to the LM head (a matmul there)."""
        lookups = ["wpe"] * ("wpe" in self.transformer) + ["wte"] * (not self.config.tie_embeddings)
        return sum(p.numel() for p in self.parameters()) - non_embedding * sum(
            self.transformer[name].weight.numel() for name in lookups)

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache on this model's device, in its dtype (or `dtype`: the autocast dtype, if any)."""
        weight = self.transformer.wte.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=dtype or weight.dtype)

"""Batches: the third step of the flow, token bins -> (x, y) pairs the model learns from.

    train.bin (np.memmap of token ids) ──Batches.next()──▶ x, y: int64 [batch_size, block_size]

y is x shifted by one token: y[b, t] is the token that follows x[b, t], the answer the model must predict at
every position. The windows are drawn at random, from a seeded generator whose state is saved in checkpoints,
so a resumed run draws exactly the windows the uninterrupted run would have.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt.corpus import DataWarning
from gpt.errors import UserError

if TYPE_CHECKING:
    import torch



class Batches:
    """Random windows of block_size + 1 tokens: x is the first block_size, y the last block_size.

    Every rank runs the same generator (seeded with `seed`) and each call draws one global batch of
    world_size * batch_size windows, of which rank r takes the r-th slice: ranks see different windows, and
    since drawing 4B start positions equals drawing B four times, world_size ranks see together exactly the
    windows one process would see in world_size consecutive calls (results do not depend on the number of
    processes). `state_dict` / `load_state_dict` resume the stream exactly.
    """

    def __init__(self, bin_path, block_size: int, batch_size: int, *, seed: int, device="cpu",
                 rank: int = 0, world_size: int = 1, dtype=None):
        self.bin_path = Path(bin_path)
        if not self.bin_path.is_file():
            raise UserError(f"token file {self.bin_path} not found: prepare the corpus first (python -m gpt.data ...)")
        if dtype is None:
            meta_path = self.bin_path.parent / "meta.json"
            if not meta_path.is_file():
                raise UserError(f"no meta.json beside {self.bin_path} to say its dtype: pass dtype (uint16 or uint32)")
            dtype = json.loads(meta_path.read_text(encoding="utf-8"))["dtype"]
        if block_size < 1 or batch_size < 1:
            raise UserError(f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world_size {world_size}")
        self.dtype = np.dtype(dtype)
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        import torch  # here, not at the top: `python -m gpt.data` prepares without paying for torch's import

        self.device = torch.device(device)
        self.n_tokens = self.bin_path.stat().st_size // self.dtype.itemsize
        needed = self.block_size + 1
        if self.n_tokens < needed:
            fix = "raise val_fraction" if self.bin_path.name == "val.bin" else "lower val_fraction"
            raise UserError(
                f"{self.bin_path.name} has {self.n_tokens} tokens but one block needs block_size + 1 = {needed}: "
                f"lower block_size, {fix}, or give more text"
            )
        self.n_windows = self.n_tokens - self.block_size  # distinct start positions
        if self.batch_size > self.n_windows:
            raise UserError(
                f"batch_size {self.batch_size} is larger than the {self.n_windows} distinct windows of "
                f"block_size {self.block_size} in {self.bin_path.name} ({self.n_tokens} tokens): lower batch_size or block_size"
            )
        self.data = np.memmap(self.bin_path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        self._offsets = np.arange(self.block_size + 1, dtype=np.int64)
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed)))
        self.batches_drawn = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_starts = self.rng.integers(0, self.n_windows, size=self.batch_size * self.world_size)
        starts = global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = self.data[starts[:, None] + self._offsets].astype(np.int64)
        self.batches_drawn += 1
        import torch

        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
        if self.device.type == "cuda":
            # Page-locked host memory lets the copy overlap with the GPU's work on the previous step.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        if self.device.type != "cpu":
            return x.to(self.device), y.to(self.device)
        return x, y

    __next__ = next

    def __iter__(self) -> "Batches":
        return self

    def state_dict(self) -> dict:
        return {
            "version": 1,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "n_tokens": self.n_tokens,
            "batches_drawn": self.batches_drawn,
            # As a JSON string: the generator state holds 128-bit integers, which torch.load(weights_only) refuses.
            "rng": json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            rng_state = json.loads(state["rng"])
            drawn = int(state["batches_drawn"])
        except (KeyError, TypeError, ValueError):
            raise UserError("the saved batch sampler state is damaged or from another version: start the run afresh") from None
        mismatched = [k for k in ("block_size", "batch_size", "n_tokens") if state.get(k) != getattr(self, k)]
        if mismatched:
            warnings.warn(
                f"resuming the batch sampler with different {', '.join(mismatched)} than the saved run: "
                "its batches will not match the ones the saved run would have drawn", DataWarning, stacklevel=2)
        self.rng.bit_generator.state = rng_state
        self.batches_drawn = drawn

"""Packed conversations, each alone or seeing its neighbours: what the block-diagonal mask changes.

    python bench/packing.py out/sft_tasks [more tuned checkpoints]     # quality: the val split, two ways
    python bench/packing.py out/sft_tasks --speed 40 --threads 1      # and the mask's cost, forward + backward

Training packs whole conversations into windows of block_size + 1 tokens (gpt/post/chat_data.py) and gives
each its own attention: positions from 0 and a block-diagonal causal mask (document_mask). This scores a
tuned checkpoint on every window of the suite's val split (data/tasks, as packed for training) two ways:

    alone    pos + mask: each conversation as sampling and the server see it (what training now does)
    packed   a causal mask only, positions 0..T-1 across the window: each answer also reads the
             conversations packed before it (what training did before)

and reports the answers' loss each way, how far the target token's log-probability moves between the two
(mean, largest) and the share of answer tokens whose greedy choice differs. --speed N times forward + backward
of one training batch, causal against masked, alternated N times in this process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import harness  # noqa: F401 (puts the checkout first on sys.path)
import torch
import torch.nn.functional as F

from gpt.checkpoint import load_model
from gpt.datasets import open_training_data
from gpt.post.chat_data import document_mask

SUITE = harness.REPO / "data" / "tasks"


def open_suite(tokenizer):
    cfg = SimpleNamespace(data=[str(SUITE / "train.jsonl")], include=None, val_fraction=0.1,
                          val_data=str(SUITE / "val.jsonl"), data_dir=str(harness.REPO / "data"),
                          on_invalid_utf8="error", loss_on="assistant")
    return open_training_data(cfg, tokenizer, progress=False)


@torch.no_grad()
def quality(model, data) -> dict:
    stream = data.batches("val", model.config.block_size, 32, seed=0)
    windows = len(stream.epoch_rows(0))
    nll = {"alone": 0.0, "packed": 0.0}
    moved, flipped = [], []
    for _ in range(-(-windows // 32)):  # every window once (the last batch wraps round to the first ones)
        x, y, answer, pos = stream.next()
        y = y.masked_fill(~answer, -1)
        logp = {"alone": model(x, all_logits=True, pos=pos, mask=document_mask(pos))[0].log_softmax(-1),
                "packed": model(x, all_logits=True)[0].log_softmax(-1)}
        for way, lp in logp.items():
            nll[way] += F.nll_loss(lp.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item()
        target = y.clamp(min=0)[..., None]
        moved.append((logp["packed"].gather(-1, target) - logp["alone"].gather(-1, target))[..., 0][answer].abs())
        flipped.append((logp["packed"].argmax(-1) != logp["alone"].argmax(-1))[answer].float())
    d, f = torch.cat(moved), torch.cat(flipped)
    return {"windows": windows, "answer_tokens": d.numel(), **{f"loss_{k}": v / d.numel() for k, v in nll.items()},
            "mean_dlogp": d.mean().item(), "max_dlogp": d.max().item(), "greedy_differs": f.mean().item()}


def speed(model, data, repeats: int) -> dict:
    x, y, answer, pos = data.batches("train", model.config.block_size, 32, seed=0).next()
    y = y.masked_fill(~answer, -1)
    model.train()

    def step(masked: bool) -> float:
        started = time.perf_counter()
        model(x, y, **(dict(pos=pos, mask=document_mask(pos)) if masked else {}))[1].backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):  # warm up
        step(False), step(True)
    for r in range(repeats):
        for masked in (False, True) if r % 2 == 0 else (True, False):
            times[masked].append(step(masked))
    causal, masked = statistics.median(times[False]), statistics.median(times[True])
    return {"causal_tok_per_s": x.numel() / causal, "masked_tok_per_s": x.numel() / masked, "ratio": causal / masked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+", help="tuned checkpoints (out_dirs or .pt files)")
    parser.add_argument("--speed", type=int, default=0, help="also time causal vs masked, alternated this many times")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for ckpt in args.ckpts:
        loaded = load_model(ckpt)
        data = open_suite(loaded.tokenizer)
        results[ckpt] = quality(loaded.model.eval(), data)
        if args.speed:
            results[ckpt]["speed"] = speed(loaded.model, data, args.speed)
        print(ckpt, results[ckpt], flush=True)
    print(f"wrote {harness.write('packing', {'results': results})}")


if __name__ == "__main__":
    main()

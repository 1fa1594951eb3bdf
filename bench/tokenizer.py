"""Tokenizer speed: BPE training time (gpt/bpe.py) and encoding throughput of char, bpe and gpt2.

    .venv/bin/python bench/tokenizer.py [--repeats 3] [--train-repeats 3]

Corpora (offline): 1 MB = ../shared/corpora/tinyshakespeare.txt; 10 MB = the first 10,000,000 UTF-8 bytes
(cut back to a character boundary) of this Python's standard library .py sources
(sysconfig.get_paths()['stdlib'], sorted by path, site-packages left out), joined as they are.
Each measurement: one warm-up, then repeats; the table reports median with min/max.
Throughput MB/s = UTF-8 bytes (10^6) of the text / seconds. Results: bench/results/tokenizer.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sysconfig
import time
from pathlib import Path

import harness
import tiktoken

from gpt.bpe import train_bpe
from gpt.tokenizer import TiktokenTokenizer
from gpt.tokenizer_files import load_gpt2, load_tokenizer

REPO = harness.REPO

SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
GPT2_DIR = REPO.parent / "shared" / "gpt2"


def stdlib_text(n_bytes: int = 10_000_000) -> tuple[str, int]:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total, n_files = [], 0, 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        n_files += 1
        total += len(text.encode("utf-8"))
        if total >= n_bytes:
            break
    data = "".join(parts).encode("utf-8")[:n_bytes]
    return data.decode("utf-8", errors="ignore"), n_files


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed encoding runs per tokenizer")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training runs per BPE size")
    args = parser.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # never let tiktoken fetch or cache anything

    shakespeare = SHAKESPEARE.read_text(encoding="utf-8")
    big, n_files = stdlib_text()
    mb_small, mb_big = len(shakespeare.encode()) / 1e6, len(big.encode()) / 1e6
    print(f"corpora: tinyshakespeare {mb_small:.2f} MB; stdlib .py sources {mb_big:.2f} MB ({n_files} files)", flush=True)

    training = []
    for label, text, size, mb in [
        ("tinyshakespeare", shakespeare, 4096, mb_small),
        ("tinyshakespeare", shakespeare, 16384, mb_small),
        ("stdlib-py", big, 8192, mb_big),
    ]:
        # The first training in the process also builds the regex classes (~0.1 s); the warm-up absorbs it.
        result = timed(lambda: train_bpe(text, size), args.train_repeats)
        training.append({"corpus": label, "MB": round(mb, 3), "vocab_size": size, **result})
        print(f"train bpe:{size} on {label} ({mb:.2f} MB): median {result['median_s']:.2f} s", flush=True)

    tokenizers = {
        "char": load_tokenizer("char", big),
        "bpe:8192 (trained on the 10 MB)": TiktokenTokenizer("bpe:8192", "bpe", train_bpe(big, 8192)),
        "bpe:4096 (trained on shakespeare)": TiktokenTokenizer("bpe:4096", "bpe", train_bpe(shakespeare, 4096)),
        "gpt2": load_gpt2(GPT2_DIR),
    }
    encoding = []
    for name, tok in tokenizers.items():
        n_tokens = len(tok.encode(big))
        result = timed(lambda: tok.encode(big), args.repeats)
        encoding.append(
            {
                "tokenizer": name,
                "MB": round(mb_big, 3),
                "tokens": n_tokens,
                "bytes_per_token": round(mb_big * 1e6 / n_tokens, 3),
                "MB_per_s_median": mb_big / result["median_s"],
                "MB_per_s_min": mb_big / result["max_s"],
                "MB_per_s_max": mb_big / result["min_s"],
                **result,
            }
        )
        print(f"encode {name}: {mb_big / result['median_s']:.2f} MB/s", flush=True)

    machine = {**harness.machine(), "tiktoken": tiktoken.__version__}
    out = harness.write("tokenizer", {"tiktoken": tiktoken.__version__, "training": training, "encoding": encoding})

    gpt2_rate = next(e["MB_per_s_median"] for e in encoding if e["tokenizer"] == "gpt2")
    print(f"\n{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, tiktoken {machine['tiktoken']}")
    print(f"\n{'BPE training':<36}{'MB':>7}{'vocab':>8}{'median s':>10}{'min s':>8}{'max s':>8}")
    for t in training:
        print(f"{t['corpus']:<36}{t['MB']:>7.2f}{t['vocab_size']:>8}{t['median_s']:>10.2f}{t['min_s']:>8.2f}{t['max_s']:>8.2f}")
    print(f"\n{'encoding 10 MB of stdlib .py':<36}{'MB/s':>7}{'min':>7}{'max':>7}{'B/token':>9}{'vs gpt2':>9}")
    for e in encoding:
        print(
            f"{e['tokenizer']:<36}{e['MB_per_s_median']:>7.2f}{e['MB_per_s_min']:>7.2f}{e['MB_per_s_max']:>7.2f}"
            f"{e['bytes_per_token']:>9.2f}{e['MB_per_s_median'] / gpt2_rate:>8.2f}x"
        )
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

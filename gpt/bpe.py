"""Byte-level BPE training: the corpus -> a ranked list of tokens for the `bpe:<N>` tokenizer.

text ──pre-split (GPT-2's regex)──▶ unique words × frequency ──merges──▶ ranks ──▶ gpt/tokenizer.py
                                                                          (a tiktoken.Encoding)

`train_bpe(text, vocab_size)` returns the *mergeable ranks*: a list of byte strings whose index is the
token id. The first 256 are the single bytes 0..255 (id == byte value); then one token per learned merge,
in the order learned. `<|endoftext|>` is not in the list: it is a special token that takes the last id,
`vocab_size - 1`, so `len(ranks) == vocab_size - 1`. Encoding and decoding are not done here:
gpt/tokenizer.py builds a `tiktoken.Encoding` from the ranks (fast, and the same format as GPT-2's).

The rules, which the slow reference trainer in tests/test_bpe.py follows too:
- The corpus is first cut at every literal "<|endoftext|>" (documents never merge across it and the
  marker itself is not learned), then pre-split with GPT-2's pattern (`split_words`); merges never
  cross a word boundary.
- Each step merges the adjacent pair (A, B) with the highest count over the corpus; ties go to the
  lexicographically smallest pair, comparing A first and then B as byte strings, i.e. the smallest
  `(A, B)` tuple of bytes. Occurrences in a word are replaced left to right, without overlap
  ("aaa" with pair (a, a) becomes "[aa] a").
- Tokens are byte strings: a merge whose result A+B is already a token (reached earlier through
  another split) reuses that token and adds nothing to the vocabulary. Training stops when the
  vocabulary is full; if no pair is left before that, the corpus cannot support the requested size
  and that is a UserError saying what was reached.

Speed: pairs are counted once over the unique words weighted by their frequency; each merge then only
revisits the words that contain the merged pair (an index pair -> words) and updates the counts around
it. The best pair comes from a heap with lazy invalidation: an entry's count is an upper bound of the
pair's true count, so a popped entry whose count is stale is pushed back with the true count.
"""

from __future__ import annotations

import functools
import heapq
import re
import unicodedata
from collections import Counter, defaultdict

from gpt.errors import UserError

EOT = "<|endoftext|>"

# GPT-2's pre-split as tiktoken writes it (r50k_base/gpt2): equivalent to the original
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ and faster in tiktoken.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Unicode's White_Space property, which tiktoken's regex engine uses for \s. Python's own \s differs
# (it also matches U+001C..U+001F), so the class is spelled out.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _category_ranges(prefix: str, start: int, stop: int) -> str:
    """The body of a `re` character class: code points in [start, stop) whose category starts with `prefix`."""
    ranges: list[tuple[int, int]] = []
    for cp in range(start, stop):
        if unicodedata.category(chr(cp)).startswith(prefix):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.lru_cache(maxsize=1)
def _python_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """GPT-2's pattern for Python's `re`, which has no \\p{L}/\\p{N}: the classes come from unicodedata.

    Two compiled forms, chosen per text: Python's `re` checks a class fast within the Basic Multilingual
    Plane (a bitmap) but scans its ranges above U+FFFF one by one, which made a class that mixes both ten
    times slower on every character it does *not* contain. So text without astral characters uses
    BMP-only classes, and other text tests the astral ranges only after a one-range guard.

    Both use the original (backtracking) form of the pattern, as Python 3.10's `re` has no possessive
    quantifiers. They agree with tiktoken's split on every code point that this Python's Unicode database
    assigns (tests/test_bpe.py checks against tiktoken itself); code points assigned only by a newer
    Unicode version may split differently, which changes what is learned, never correctness.
    """
    # No letter or number is assigned above plane 3 (planes 4-13 are empty, 14 holds tags and
    # variation selectors, 15-16 are private use), so the scan stops there.
    letters_bmp, numbers_bmp = _category_ranges("L", 0, 0x10000), _category_ranges("N", 0, 0x10000)
    letters_astral, numbers_astral = _category_ranges("L", 0x10000, 0x40000), _category_ranges("N", 0x10000, 0x40000)
    space, astral = _WHITE_SPACE, "\\U00010000-\\U0010ffff"

    def gpt2(letter: str, number: str, other: str) -> re.Pattern[str]:
        return re.compile(
            rf"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+|[{space}]+(?![^{space}])|[{space}]+"
        )

    bmp_only = gpt2(f"[{letters_bmp}]", f"[{numbers_bmp}]", f"[^{space}{letters_bmp}{numbers_bmp}]")
    any_text = gpt2(
        f"(?:[{letters_bmp}]|(?=[{astral}])[{letters_astral}])",
        f"(?:[{numbers_bmp}]|(?=[{astral}])[{numbers_astral}])",
        f"(?:[^{space}{letters_bmp}{numbers_bmp}{astral}]|(?=[{astral}])(?![{letters_astral}{numbers_astral}])[{astral}])",
    )
    return bmp_only, any_text


def split_words(text: str) -> list[str]:
    """`text` cut into GPT-2's pre-split pieces (the same pieces tiktoken's GPT-2 encoding merges within)."""
    bmp_only, any_text = _python_patterns()
    pattern = bmp_only if not text or max(text) < "\U00010000" else any_text
    return pattern.findall(text)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8: replace them with U+FFFD, as tiktoken does when encoding.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def word_counts(text: str) -> Counter[bytes]:
    """How often each pre-split word occurs in `text`, as UTF-8 bytes (documents cut at <|endoftext|>)."""
    counts: Counter[str] = Counter()
    for document in text.split(EOT):
        counts.update(split_words(document))
    merged: Counter[bytes] = Counter()
    for word, n in counts.items():
        merged[_utf8(word)] += n
    return merged


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out = []
    i, n = 0, len(word)
    while i < n:
        if word[i] == a and i + 1 < n and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(text: str, vocab_size: int, *, progress: bool = False) -> list[bytes]:
    """Learn a byte-level BPE of `vocab_size` tokens (counting <|endoftext|>) from `text`.

    Returns the mergeable ranks: token bytes in id order, 256 single bytes first, `vocab_size - 1` in all
    (<|endoftext|> takes id `vocab_size - 1`). `progress` shows a tqdm bar over the merges.
    """
    _check_request(text, vocab_size)
    counted = word_counts(text)
    words = [list(w) for w in counted]
    freqs = list(counted.values())
    vocab = [bytes([i]) for i in range(256)]
    ids = {token: i for i, token in enumerate(vocab)}
    pair_counts, where = _count_pairs(words, freqs)
    # Heap order = the tie-break: highest count, then smallest (A bytes, B bytes).
    heap = [(-count, vocab[a], vocab[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    target = vocab_size - 1
    bar = None
    if progress:
        from gpt.runlog import progress_bar

        bar = progress_bar(target - 256, "bpe merges", "tok")
    try:
        while len(vocab) < target:
            best = _pop_best_pair(heap, pair_counts, vocab)
            if best is None:
                reached = len(vocab) + 1
                raise UserError(
                    f"the corpus supports only {reached} BPE tokens ({len(vocab) - 256} merges learned before "
                    f"no pair of tokens was left), not the {vocab_size} asked for: use bpe:{reached} or "
                    "fewer, or a larger corpus"
                )
            a, b = best
            merged = vocab[a] + vocab[b]
            new = ids.get(merged)
            if new is None:
                new = len(vocab)
                vocab.append(merged)
                ids[merged] = new
                if bar is not None:
                    bar.update(1)
            before = _merge_in_words(best, new, words, freqs, pair_counts, where)
            _push_changed_counts(before, heap, pair_counts, where, vocab)
    finally:
        if bar is not None:
            bar.close()
    return vocab


def _check_request(text: str, vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise UserError(
            f"a BPE vocabulary needs at least 257 tokens (256 bytes + <|endoftext|>), got {vocab_size}: "
            "use e.g. bpe:4096"
        )
    if not text or not text.replace(EOT, ""):
        raise UserError("cannot train a BPE on an empty corpus: give it some text")


Pair = tuple[int, int]


def _count_pairs(words: list[list[int]], freqs: list[int]) -> tuple[dict[Pair, int], dict[Pair, set[int]]]:
    """Each adjacent pair's count over the corpus, and the index of the words it occurs in."""
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)
    return pair_counts, where


def _pop_best_pair(heap: list, pair_counts: dict[Pair, int], vocab: list[bytes]) -> Pair | None:
    """The pair to merge next, or None when no pair is left."""
    while heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        actual = pair_counts.get((a, b), 0)
        if actual == -neg_count:
            return (a, b)
        if 0 < actual < -neg_count:  # counts fell since this entry was pushed
            heapq.heappush(heap, (-actual, vocab[a], vocab[b], a, b))
        # actual > stored: a fresher entry is already in the heap; actual == 0: the pair is gone
    return None


def _merge_in_words(best: Pair, new: int, words: list[list[int]], freqs: list[int], pair_counts: dict[Pair, int],
                    where: dict[Pair, set[int]]) -> dict[Pair, int]:
    """Replace `best` by `new` in every word that holds it, updating the counts and the index as it goes.
    Returns the count each touched pair had before, so the heap learns of the ones that grew."""
    a, b = best
    before: dict[Pair, int] = {}
    for index in where.pop(best):
        word, freq = words[index], freqs[index]
        new_word = _merge_word(word, a, b, new)
        old_pairs = list(zip(word, word[1:]))
        new_pairs = list(zip(new_word, new_word[1:]))
        for pair in old_pairs:
            if pair not in before:
                before[pair] = pair_counts[pair]
            pair_counts[pair] -= freq
        for pair in new_pairs:
            if pair not in before:
                before[pair] = pair_counts.get(pair, 0)
            pair_counts[pair] += freq
        old_set, new_set = set(old_pairs), set(new_pairs)
        for pair in old_set - new_set:
            if pair != best:
                where[pair].discard(index)
        for pair in new_set - old_set:
            where[pair].add(index)
        words[index] = new_word
    return before


def _push_changed_counts(before: dict[Pair, int], heap: list, pair_counts: dict[Pair, int],
                         where: dict[Pair, set[int]], vocab: list[bytes]) -> None:
    """Forget the pairs that are gone; push the ones whose count grew (a fallen count is fixed when popped)."""
    for pair, count_before in before.items():
        now = pair_counts[pair]
        if now <= 0:
            del pair_counts[pair]
            where.pop(pair, None)
        elif now > count_before:
            heapq.heappush(heap, (-now, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))

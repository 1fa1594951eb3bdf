"""gpt/errors.py: `plural`, the count and noun of every message (a one-line UserError is tested by each tool)."""

from __future__ import annotations

from gpt.errors import plural


def test_plural_puts_the_noun_in_the_number_of_its_count():
    assert [plural(n, "document") for n in (0, 1, 2)] == ["0 documents", "1 document", "2 documents"]
    assert plural(1, "process", "processes") == "1 process" and plural(4, "process", "processes") == "4 processes"
    assert plural(12345, "token") == "12,345 tokens"

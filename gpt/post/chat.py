"""Conversations and the chat template: how a model that continues text is taught to answer, and to stop.

Its place in the flow, beside plain text (gpt/data.py):

    conversations (.jsonl) ──read_conversations──▶ [Conversation(messages), ...]
        ──ChatTemplate.render──▶ token ids + which of them the loss counts ──gpt/post/chat_data.py──▶ packed windows
    a prompt (sample.py --chat, python -m gpt.tasks eval, the server) ──ChatTemplate.prompt──▶ ids ending "<|assistant|>"
        ──generate──▶ the answer, until the model writes <|end|>

The template. Every message becomes its role's marker, its text, and the end-of-turn marker:

    <|system|>You answer briefly.<|end|><|user|>Reverse cat.<|end|><|assistant|>tac<|end|>
                                                                                 ^^^^^^^^^^  what the loss counts

The markers are special tokens: one id each, added to any tokenizer (char, bpe:N, gpt2, a Hugging Face
folder's) after its vocabulary. Text never encodes to them (`Tokenizer.encode_ordinary`): a message that
contains the spelling "<|end|>" gets the characters, not the marker, so a user cannot forge a turn. Only the
assistant's text and its <|end|> are learned (targets -1 elsewhere), which is what makes the model answer
the prompt rather than imitate it, and end its answer instead of running on.

The template is saved in every checkpoint trained on conversations (`to_dict`), and `gpt.checkpoint.load_model`
gives it back (`Loaded.chat_template`, filled in by `give_template`): sampling, evaluation, later fine-tunes and the server use the same one.

The forms of a line of conversation data, recognised by their keys (an optional "task" names the task):

    {"prompt": ..., "response": ...}
    {"instruction": ..., "input": ... (optional), "output": ...}      input, when given, follows after a blank line
    {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}
    {"text": ...}                                                     plain text, not a conversation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gpt.datasets import read_jsonl
from gpt.errors import UserError
from gpt.tokenizer import Tokenizer

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
TEMPLATE_VERSION = 1
TEMPLATE = {"version": TEMPLATE_VERSION, "roles": ROLE_TOKENS, "end": END}  # what a checkpoint records

# The forms, by the keys that mark them (checked in this order).
FORMS = {"messages": ("messages",), "prompt": ("prompt", "response"), "instruction": ("instruction", "output"),
         "text": ("text",)}
FORM_HELP = ('{"prompt", "response"}, {"instruction", "input" (optional), "output"}, {"messages": [{"role", '
             '"content"}, ...]}, or {"text"}')


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass
class Conversation:
    messages: list[Message]
    task: str | None = None
    where: str = ""  # "file:line", for errors
    extra: dict[str, Any] = field(default_factory=dict)  # the line's other keys (e.g. a test item's "group")

    @property
    def prompt(self) -> list[Message]:
        """Everything before the last assistant message: what a model is asked."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        """The last assistant message: the expected answer."""
        return self.messages[-1].content


# ---------------------------------------------------------------------------------------------------
# Reading conversation files


def line_form(obj: Any, where: str) -> str:
    """Which form a parsed JSONL line has: messages, prompt, instruction or text."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a line must be a JSON object, one of {FORM_HELP}")
    if "chosen" in obj or "rejected" in obj:
        return "pairs"  # preference pairs, for preference tuning (gpt/post/dpo.py reads them)
    for form, keys in FORMS.items():
        if keys[0] in obj:
            missing = [k for k in keys if k not in obj]
            if missing:
                raise UserError(f"{where}: a {form!r} line lacks {', '.join(repr(k) for k in missing)}")
            return form
    raise UserError(f"{where}: the line has none of the keys of a known form (it has {sorted(obj)[:6]}); "
                    f"use {FORM_HELP}")


def _text(obj: Mapping, key: str, where: str, *, optional: bool = False) -> str:
    value = obj.get(key, "" if optional else None)
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def conversation_from_json(obj: Mapping, form: str, where: str) -> Conversation:
    """The Conversation of one parsed line of a conversation form (checked: see check_messages)."""
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise UserError(f"{where}: 'task' must be a string, got {type(task).__name__}")
    if form == "prompt":
        messages = [Message("user", _text(obj, "prompt", where)), Message("assistant", _text(obj, "response", where))]
        known = ("prompt", "response", "task")
    elif form == "instruction":
        instruction, given = _text(obj, "instruction", where), _text(obj, "input", where, optional=True)
        user = f"{instruction}\n\n{given}" if given.strip() else instruction
        messages = [Message("user", user), Message("assistant", _text(obj, "output", where))]
        known = ("instruction", "input", "output", "task")
    elif form == "messages":
        raw = obj["messages"]
        if not isinstance(raw, list):
            raise UserError(f"{where}: 'messages' must be a list of {{\"role\", \"content\"}} objects")
        messages = [message_from_json(m, f"{where}: message {i + 1}") for i, m in enumerate(raw)]
        known = ("messages", "task")
    else:
        raise UserError(f"{where}: a {form!r} line is not a conversation")
    check_messages(messages, where)
    extra = {k: v for k, v in obj.items() if k not in known}
    return Conversation(messages, task, where, extra)


def message_from_json(obj: Any, where: str) -> Message:
    if not isinstance(obj, Mapping) or "role" not in obj or "content" not in obj:
        raise UserError(f"{where} must be an object with 'role' and 'content'")
    role = obj["role"]
    if role not in ROLE_TOKENS:
        raise UserError(f"{where}: role {role!r} is not one of system, user, assistant")
    return Message(role, _text(obj, "content", where))


def check_messages(messages: Sequence[Message], where: str, *, answered: bool = True) -> None:
    """The order a conversation must have: an optional system message first, then user and assistant turns
    alternating from a user turn; with `answered`, ending on a non-empty assistant turn (what is trained on)."""
    if not messages:
        raise UserError(f"{where}: the conversation has no messages")
    body = messages[1:] if messages[0].role == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            position = i + 1 + (len(messages) - len(body))
            why = "a system message may only come first" if message.role == "system" else \
                f"expected a {expected} turn (user and assistant turns alternate, starting with the user)"
            raise UserError(f"{where}: roles out of order at message {position} ({message.role}): {why}")
        if message.role == "user" and not message.content.strip():
            raise UserError(f"{where}: message {i + 1 + (len(messages) - len(body))} is an empty user turn")
        if message.role == "assistant" and not message.content.strip():
            raise UserError(f"{where}: an empty response (assistant turn {i // 2 + 1}): give it some text, or "
                            "leave the line out")
    if not answered:
        return
    if not any(m.role == "assistant" for m in body):
        raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn: "
                        "add the answer")
    if body[-1].role != "assistant":
        raise UserError(f"{where}: the conversation ends with a user turn that has no answer: add the "
                        "assistant's reply or drop the last turn")


def read_records(path: Path) -> tuple[str, list[Conversation | str]]:
    """A JSONL file's form and its lines: Conversations, or texts for a {"text"} file. One form per file."""
    form: str | None = None
    records: list[Conversation | str] = []
    for line_no, obj in read_jsonl(path):
        where = f"{path}:{line_no}"
        this = line_form(obj, where)
        if this == "pairs":
            raise UserError(f"{where}: a preference pair (chosen/rejected), not a conversation: pairs train with "
                            "train.py --init_from=<a tuned model>, and a file holds one form")
        kind = "text" if this == "text" else "conversation"
        if form is None:
            form = this
        elif ("text" if form == "text" else "conversation") != kind or (kind == "conversation" and this != form):
            raise UserError(f"{where}: a {this!r} line in a file whose first line is a {form!r} line: use one "
                            "form per file")
        if this == "text":
            records.append(_text(obj, "text", where))
        else:
            records.append(conversation_from_json(obj, this, where))
    if form is None:
        raise UserError(f"{path} holds no lines: give it one JSON object per line")
    return form, records


def read_conversations(paths: Iterable[Path | str]) -> list[Conversation]:
    """Every conversation in the given JSONL files, in order (the task scorer's and the trainer's reader)."""
    conversations: list[Conversation] = []
    for path in paths:
        form, records = read_records(Path(path))
        if form == "text":
            raise UserError(f"{path} holds plain text ({{\"text\"}} lines), not conversations: give prompt/response, "
                            "instruction or messages lines")
        conversations += records  # type: ignore[arg-type]
    return conversations


def as_messages(messages: Iterable[Message | Mapping[str, Any]], where: str = "the messages") -> list[Message]:
    """Messages given as Message objects or {"role", "content"} dicts (as an API request has them)."""
    out = []
    for i, m in enumerate(messages):
        out.append(m if isinstance(m, Message) else message_from_json(m, f"{where}: message {i + 1}"))
    return out


# ---------------------------------------------------------------------------------------------------
# The template


class ChatTemplate:
    """Renders conversations into token ids with the tokenizer's chat markers (see the module docstring).

    Build one with `ChatTemplate.for_tokenizer(tok)` (which adds the markers to a tokenizer lacking them), or get
    a trained model's with `gpt.checkpoint.load_model(path).chat_template`.
    """

    def __init__(self, tokenizer: Tokenizer):
        missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
        if missing:
            raise UserError(f"the {tokenizer.name} tokenizer lacks the chat tokens {', '.join(missing)}: the "
                            "checkpoint is damaged")
        self.tokenizer = tokenizer
        self.role_ids = {role: tokenizer.special_tokens[token] for role, token in ROLE_TOKENS.items()}
        self.end_id = tokenizer.special_tokens[END]
        # Any marker ends an answer; a well-trained model ends with <|end|> (what the scorer calls "ended").
        self.stop_ids = frozenset([*self.role_ids.values(), self.end_id]
                                  + ([tokenizer.eot_id] if tokenizer.eot_id is not None else []))

    @staticmethod
    def add_tokens(tokenizer: Tokenizer) -> Tokenizer:
        """The tokenizer with the chat markers (unchanged if it has them already)."""
        return tokenizer.with_special_tokens(CHAT_TOKENS)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> "ChatTemplate":
        return cls(cls.add_tokens(tokenizer))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], tokenizer: Tokenizer) -> "ChatTemplate":
        """The template saved in a checkpoint by `to_dict`."""
        if not isinstance(data, Mapping) or dict(data) != TEMPLATE:
            raise UserError("the checkpoint's chat template is from another version of this project: tune the model "
                            "again with this version")
        return cls(tokenizer)

    @staticmethod
    def of_tokenizer(tokenizer: Tokenizer) -> "ChatTemplate | None":
        """The template a tokenizer carries the markers of, or None."""
        return ChatTemplate(tokenizer) if all(t in tokenizer.special_tokens for t in CHAT_TOKENS) else None

    def to_dict(self) -> dict[str, Any]:
        return {"version": TEMPLATE_VERSION, "roles": dict(ROLE_TOKENS), "end": END}  # == TEMPLATE

    def encode_text(self, text: str) -> list[int]:
        """A message's text as tokens: never a marker, whatever the text spells."""
        return self.tokenizer.encode_ordinary(text)

    def render(self, messages: Iterable[Message | Mapping[str, Any]]) -> tuple[list[int], list[bool]]:
        """A whole conversation: its ids, and for each id whether the loss counts it (an assistant's text and
        that turn's <|end|>: the tokens the model must learn to produce)."""
        ids: list[int] = []
        learned: list[bool] = []
        for message in as_messages(messages):
            body = self.encode_text(message.content) + [self.end_id]
            answer = message.role == "assistant"
            ids += [self.role_ids[message.role], *body]
            learned += [False] + [answer] * len(body)
        return ids, learned

    def prompt(self, messages: Iterable[Message | Mapping[str, Any]]) -> list[int]:
        """The ids that ask the model for the assistant's next turn: the messages, then "<|assistant|>" open.

        If the last message is the assistant's, it is left open instead (no <|end|>), so the model continues
        it. This is what sample.py --chat, the task scorer and the server feed the model.
        """
        messages = as_messages(messages)
        check_messages(messages, "the conversation", answered=False)
        if messages[-1].role == "assistant":
            ids, _ = self.render(messages[:-1])
            return ids + [self.role_ids["assistant"]] + self.encode_text(messages[-1].content)
        ids, _ = self.render(messages)
        return ids + [self.role_ids["assistant"]]

    def trim_history(self, messages: Sequence[Message | Mapping[str, Any]], max_tokens: int) -> list[Message]:
        """The most recent turns whose prompt fits in max_tokens: the oldest user/assistant exchanges are dropped
        first; a system message stays, and so does the last user turn (even if it alone is longer)."""
        messages = as_messages(messages)
        system = messages[:1] if messages and messages[0].role == "system" else []
        turns = messages[len(system):]
        while len(turns) > 2 and len(self.prompt(system + turns)) > max_tokens:
            turns = turns[2:]  # the oldest exchange: a user turn and its answer
        return system + turns

    def answer_text(self, ids: Iterable[int]) -> tuple[str, bool]:
        """Generated ids -> (the answer's text, whether it ended with <|end|>). Stops at the first marker."""
        kept: list[int] = []
        for i in ids:
            if i in self.stop_ids:
                return self.tokenizer.decode(kept), i == self.end_id
            kept.append(i)
        return self.tokenizer.decode(kept), False


def give_template(loaded: Any) -> None:
    """Completes a model opened for use (gpt/checkpoint.py's Loaded; registered in gpt/layers.py): the chat template
    it was tuned with, from its checkpoint, or the one its tokenizer carries the markers of (a Hugging Face folder
    exported from a chat model; a chat model fine-tuned further on plain text); None for a model never tuned on
    conversations."""
    if loaded.chat_template is not None:
        return
    state = loaded.checkpoint
    if state is not None and "chat_template" in state:
        loaded.chat_template = ChatTemplate.from_dict(state["chat_template"], loaded.tokenizer)
    else:
        loaded.chat_template = ChatTemplate.of_tokenizer(loaded.tokenizer)

"""The seams where the layers around the core plug in: kinds of training data, adapters, what a loaded model carries.

Its place in the house: the core (text → tokens → batches → model → loss → optimizer → checkpoint → sampling)
never imports a layer (gpt/post: conversations, preference tuning, adapters, the task suite). A layer announces
itself in pyproject.toml as an entry point of the group "gpt.layers", a function that registers what it adds:

    add_data_kind(kind)       a kind of training data in JSONL files: recognises a line (or is chosen by a
                              setting), opens the files as TrainingData (gpt/datasets.py asks every kind, then
                              takes plain {"text"} itself)
    add_adaptation(a)         something trained over a frozen model instead of its weights (LoRA adapters): how
                              to start, save, open, merge and resume it (the `Adaptation` interface below)
    add_on_load(hook)         completes a model opened for use (gpt/checkpoint.py's Loaded: the chat template)

The core asks for these through the functions at the bottom, which load the announced layers the first time.
A new layer is a package with a register function and one line in pyproject.toml; the core does not change.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from gpt.checkpoint import Loaded
    from gpt.model import GPT
    from gpt.tokenizer_files import TokenizerChoice

GROUP = "gpt.layers"


class DataKind(Protocol):
    """A kind of training data held in JSONL files (conversations, preference pairs, ...)."""

    name: str  # "conversations", "pairs": what the data is called in messages
    line_help: str  # the keys of its lines, for an error that lists every known form

    def recognises(self, line: dict[str, Any]) -> bool:
        """Whether a file whose first line is `line` holds this kind."""

    def chosen_by(self, cfg: Any) -> bool:
        """Whether the run's settings ask for this kind whatever the lines look like (rl = true: prompt/response
        lines read as prompts to answer, gpt/post/rl.py); False for a kind known by its lines alone."""

    def open(self, files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> Any:
        """The files as a TrainingData (gpt/datasets.py) for the run's settings `cfg`, tokenized as `tokenizer`
        (ready, or a spec to fit to the files) says."""


class Adaptation(Protocol):
    """A small set of weights trained over a frozen model in place of its own (LoRA: gpt/post/adapters.py).

    A run trains one when `active(cfg)`; its checkpoints then hold `key` (the adaptation's weights and where its
    base is) instead of "model"."""

    key: str

    def check_settings(self, cfg: Any) -> None:
        """A UserError for settings that cannot work."""

    def active(self, cfg: Any) -> bool:
        """Whether the run's settings ask for this adaptation."""

    def carried_by(self, model: torch.nn.Module) -> bool:
        """Whether the model carries this adaptation."""

    def describe_base(self, loaded: Loaded, cfg: Any) -> dict[str, Any]:
        """What a new run records of the model it adapts (where it is, a fingerprint of its weights)."""

    def start(self, model: GPT, base: dict[str, Any], cfg: Any) -> GPT:
        """The model of a new run (its init_from, rebuilt for the run) with a fresh adaptation attached."""

    def resume(self, state: dict[str, Any], path: Path, cfg: Any) -> GPT:
        """The model of a resumed run, rebuilt from its checkpoint `state` (the base found and checked)."""

    def open(self, spec: str | Path, *, base: str | Path | None, state: dict[str, Any] | None,
             device: torch.device | str) -> Loaded:
        """A checkpoint of this adaptation opened for use: its base with it applied."""

    def with_grown_vocab(self, model: GPT, first_new: int, grow: Callable[[GPT], GPT]) -> GPT:
        """The model after `grow` gave its base rows for tokens first_new.., the adaptation training them."""

    def merge(self, model: GPT) -> GPT:
        """The plain model that computes what the adapted one does (a no-op on a plain model)."""

    def checkpoint_entry(self, model: GPT) -> dict[str, Any]:
        """What a checkpoint holds under `key` instead of the model's weights."""

    def summary(self, model: GPT) -> str:
        """One line for the log: what trains."""


_data_kinds: list[DataKind] = []
_adaptations: list[Adaptation] = []
_on_load: list[Callable[[Loaded], None]] = []
_loaded = False


def add_data_kind(kind: DataKind) -> None:
    _data_kinds.append(kind)


def add_adaptation(adaptation: Adaptation) -> None:
    _adaptations.append(adaptation)


def add_on_load(hook: Callable[[Loaded], None]) -> None:
    _on_load.append(hook)


def load_layers() -> None:
    """Register every layer announced in the installed package's metadata (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=GROUP):
        entry.load()()


def data_kinds() -> list[DataKind]:
    load_layers()
    return list(_data_kinds)


def adaptations() -> list[Adaptation]:
    load_layers()
    return list(_adaptations)


def adaptation_for_checkpoint(state: dict[str, Any]) -> Adaptation | None:
    """The adaptation whose weights a checkpoint holds (None: a plain model)."""
    return next((a for a in adaptations() if a.key in state), None)


def adaptation_of(model: torch.nn.Module) -> Adaptation | None:
    """The adaptation a model carries (None: a plain model)."""
    return next((a for a in adaptations() if a.carried_by(model)), None)


def on_load_hooks() -> list[Callable[[Loaded], None]]:
    load_layers()
    return list(_on_load)


def plain(model: GPT) -> GPT:
    """The model without what a layer attached to it (an adapter merged into its base); a plain model as it is."""
    adaptation = adaptation_of(model)
    return adaptation.merge(model) if adaptation is not None else model

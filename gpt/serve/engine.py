"""The engine: one thread that decodes every request in flight together, one batched step at a time.

Requests arrive at any moment, each asking for n samples of one prompt (a "job"). The engine keeps one
`Decoder` (gpt/decoding.py, the same decoding code as sample.py) whose rows are the samples being
generated. Before each step, waiting jobs whose n rows fit in the batch join it; after the step, the rows
that finished (max_tokens reached, a stop string, <|endoftext|>, or a client that went away) leave it. So
eight clients cost about one batched forward pass per token, not eight passes, and a short request never
waits for a long one to end ("continuous batching").

                submit(job) ──▶ waiting queue (bounded) ──join──▶ Decoder rows ──step──▶ token per row
                                                                       ▲                      │
                                                                       └─leave when finished──┘

Each token becomes events for the job's listener (`Piece`, `Finished`, `Done`), called from this thread:
the HTTP layer (gpt/serve/app.py) hands them over to its event loop. Nothing here knows about HTTP.

Sampling is sample.py's: `sample` and `next_token_probs` with the job's settings, one random stream per
sample (`sample_generators`), and a `TextStream` per sample for stop strings and split UTF-8. Every row of a
step is sampled in one call (each with its own settings and stream), and a long prompt enters the batch
`prefill_chunk` tokens a step, so the rows already streaming are not stalled while it is read. For a chat
model a sample also ends at its template's end of turn (`Settings.stop_ids`), as in sample.py.
A job decoded alone therefore gives exactly sample.py's text for the same seed and settings; batched with
other jobs, the matmuls see more rows and may round differently in the last bit, which changes a sampled
token only in a rare near-tie.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from gpt.decoding import Decoder, TextStream
from gpt.sampling import next_token_probs, sample, sample_generators
from gpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

IMPOSSIBLE_LOGPROB = -9999.0  # the log-probability reported for a token the filters rule out (log 0), as OpenAI does


@dataclass
class Settings:
    """How to sample one job: the request's parameters, already checked (gpt/serve/protocol.py)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # None: a fresh random seed
    logprobs: int | None = None  # None: none; k: the picked token's log-probability and the k likeliest
    stop_ids: frozenset[int] = frozenset()  # tokens that end a sample (besides <|endoftext|>), e.g. a chat turn's end


# Events, in order for each sample: Piece* Finished; then one Done for the job (or one Failed).
@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the k likeliest tokens and their log-probabilities, likeliest first


@dataclass
class Piece:
    index: int  # which of the job's n samples
    text: str  # text that can be shown now (may be empty: held back for a stop string or a split character)
    logprob: TokenLogprob | None  # the token's, when logprobs were asked for


@dataclass
class Finished:
    index: int
    reason: str  # "stop" (a stop string, <|endoftext|> or a stop token) or "length" (max_tokens)
    tokens: int  # tokens generated for this sample


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """The job could not be finished: the server's fault, not the request's. What went wrong is logged, under
    the job's request_id, and not carried here: it is not for the client to see (paths, other requests)."""


class Busy(Exception):
    """The waiting queue has no room for the jobs now: the HTTP layer answers 429."""

    def __init__(self, waiting: int, max_waiting: int):
        super().__init__(f"{waiting} jobs are waiting (at most {max_waiting})")
        self.waiting = waiting
        self.max_waiting = max_waiting


class ShuttingDown(Exception):
    """The engine no longer takes jobs: the HTTP layer answers 503."""


class Job:
    """One prompt's n samples, from the queue to the last token. `cancel()` may be called from any thread."""

    def __init__(self, prompt_ids: list[int], settings: Settings, listener: Callable[[object], None],
                 request_id: str = ""):
        self.prompt_ids = prompt_ids
        self.request_id = request_id  # names the job in the log, where a client quoting it can be found
        self.settings = settings
        self.listener = listener
        self.cancelled = False
        self.samples: list[_Sample] = []
        self.running = 0  # samples not finished yet

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread before its next step: the rows leave then


@dataclass
class _Sample:
    job: Job
    index: int
    text: TextStream
    generator: torch.Generator
    tokens: int = 0
    done: bool = False


class Engine:
    """The decode loop in a thread of its own. submit() jobs from any thread; close() to stop it."""

    def __init__(self, model, tokenizer: Tokenizer, *, max_batch: int = 16, max_waiting: int = 64,
                 dtype: torch.dtype = torch.float32, prefill_chunk: int = 0):
        if max_batch < 1 or max_waiting < 1:  # an engine that could never take a job
            raise ValueError(f"max_batch and max_waiting must be at least 1, got {max_batch} and {max_waiting}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.device = next(model.parameters()).device
        # A long prompt joins in chunks of prefill_chunk tokens, one per step, so the rows already decoding
        # keep streaming meanwhile (0: in one forward pass).
        self.decoder = Decoder(model, None, use_kv_cache=True, dtype=dtype, vocab_size=tokenizer.vocab_size,
                               max_rows=max_batch, prefill_chunk=prefill_chunk)
        # The sample each row of the decoder generates (same order). Only the engine thread reads or changes it
        # (other threads may take its len()): rows join and leave between steps, outside the lock.
        self.rows: list[_Sample] = []
        self.waiting: deque[Job] = deque()
        self.lock = threading.Condition()
        self.closing = False
        self.generated = 0  # tokens generated since start, for /health
        self.steps = 0  # batched decode steps since start
        self.thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------------------------
    # The other threads' side

    def submit(self, jobs: list[Job]) -> None:
        """Queue the jobs of one request, all or none; raises Busy when the queue has no room for them now."""
        with self.lock:
            self._check_room(len(jobs))
            self.waiting.extend(jobs)
            self.lock.notify()

    def check_room(self, count: int) -> None:
        """Raise what submit() of `count` jobs would raise now (Busy, ShuttingDown), so that a request can be
        refused before the work of tokenizing it. submit() checks again: the queue may fill meanwhile."""
        with self.lock:
            self._check_room(count)

    def _check_room(self, count: int) -> None:
        if count > self.max_waiting:  # no room ever: the caller must refuse such a request itself (not a 429)
            raise ValueError(f"{count} jobs can never wait together: max_waiting is {self.max_waiting}")
        if self.closing:
            raise ShuttingDown()
        if len(self.waiting) + count > self.max_waiting:
            raise Busy(len(self.waiting), self.max_waiting)

    def stats(self) -> dict:
        with self.lock:
            return {"running_samples": len(self.rows), "waiting_requests": len(self.waiting),
                    "max_batch": self.max_batch, "max_waiting": self.max_waiting, "generated_tokens": self.generated,
                    "decode_steps": self.steps}

    def close(self, timeout: float = 10.0) -> None:
        """Cancel whatever is still queued or running and stop the thread. The engine thread does the
        cancelling: the rows are its own, changed between steps without the lock, so no other thread may walk them."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.thread.join(timeout)

    # ------------------------------------------------------------------------------------------------
    # The engine thread

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.closing:
                    self._admit()
                    if self.rows:
                        break
                    self.lock.wait()
                closing = self.closing
                if closing:  # close() was called: everything queued or running is cancelled, here
                    for job in [*self.waiting, *(row.job for row in self.rows)]:
                        job.cancel()
                    self.waiting.clear()
            self._drop_cancelled()
            if closing:
                return
            if not self.rows:
                continue
            try:
                self._step()
            except Exception as e:  # our bug, or out of memory: fail what is in flight and keep serving
                self._fail_all(e)

    def _fail_all(self, error: Exception) -> None:
        """Fail every job in the batch: one step decodes them all, so one error spoils them all."""
        jobs = list(dict.fromkeys(row.job for row in self.rows))
        log.error("a decode step failed; failing the requests in the batch: %s",
                  ", ".join(job.request_id or "(no id)" for job in jobs), exc_info=error)
        for job in jobs:
            job.listener(Failed())
        for index in reversed(range(len(self.rows))):
            self._leave(index)

    def _admit(self) -> None:
        """Move waiting jobs into the batch, in order, while their rows fit (called with the lock held)."""
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if len(self.rows) + job.settings.n > self.max_batch:
                return  # first come, first served: later jobs wait too
            self.waiting.popleft()
            seed = job.settings.seed if job.settings.seed is not None else secrets.randbits(63)
            generators = sample_generators(seed, job.settings.n, self.device)
            for i, generator in enumerate(generators):
                row = _Sample(job, i, TextStream(self.tokenizer, job.settings.stop), generator)
                job.samples.append(row)
                self.rows.append(row)
                self.decoder.add(job.prompt_ids)
            job.running = job.settings.n

    def _drop_cancelled(self) -> None:
        for index in reversed(range(len(self.rows))):
            if self.rows[index].job.cancelled:
                self._leave(index)

    def _leave(self, index: int) -> None:
        # The decoder moves its last row into `index`; the list of samples must do the same.
        self.decoder.remove(index)
        self.rows[index] = self.rows[-1]
        self.rows.pop()

    def _step(self) -> None:
        logits = self.decoder.next_logits()  # [rows, V]
        # The rows with a next token this step: not those still filling their cache with a long prompt.
        ready = [index for index, row in enumerate(self.decoder.rows) if not row.filling]
        # Every ready row sampled in one call, each with its job's settings and its own stream: a row draws
        # exactly what it would draw alone (gpt/sampling.py), and the step costs a few batched operations.
        settings = [self.rows[i].job.settings for i in ready]
        picked = torch.zeros(len(self.rows), dtype=torch.long)
        if ready:
            picked[ready] = sample(logits[ready], [s.temperature for s in settings], [s.top_k for s in settings],
                                   [s.top_p for s in settings], [self.rows[i].generator for i in ready]).cpu()
        logprobs: dict[int, TokenLogprob] = {}
        for index in ready:
            s = self.rows[index].job.settings
            if s.logprobs is not None:  # rare, and per job in the API: per row here
                logprobs[index] = token_logprobs(logits[index : index + 1], picked[index : index + 1], s)[0]
        self.decoder.append(picked)  # rows still filling take no token

        eot = self.tokenizer.eot_id
        for index, token in zip(ready, picked[ready].tolist()):
            row = self.rows[index]
            row.tokens += 1
            settings = row.job.settings
            ends = token == eot or token in settings.stop_ids
            text = row.text.finish() if ends else row.text.push(token)
            reason = "stop" if ends or row.text.done else "length" if row.tokens >= settings.max_tokens else None
            if reason is not None and not ends:
                text += row.text.finish()
            row.job.listener(Piece(row.index, text, None if ends else logprobs.get(index)))
            if reason is not None:
                row.done = True
                row.job.listener(Finished(row.index, reason, row.tokens))
                row.job.running -= 1
                if row.job.running == 0:
                    completion = sum(r.tokens for r in row.job.samples)
                    row.job.listener(Done(len(row.job.prompt_ids), completion))
        self.generated += len(ready)
        self.steps += 1
        for index in reversed(range(len(self.rows))):
            if self.rows[index].done:
                self._leave(index)


def token_logprobs(logits: torch.Tensor, picked: torch.Tensor, settings: Settings) -> list[TokenLogprob]:
    """The log-probabilities sample.py --show_probs shows: of the distribution the token is drawn from (after
    temperature, top_k and top_p; at temperature 0, the temperature-1 distribution), for each row of logits."""
    temperature = settings.temperature if settings.temperature > 0 else 1.0
    logp = next_token_probs(logits, temperature, settings.top_k, settings.top_p).log()  # [n, V], -inf where ruled out
    chosen = logp.gather(1, picked.view(-1, 1).to(logp.device)).view(-1).tolist()
    k = min(settings.logprobs or 0, logp.shape[-1])
    top_values, top_ids = torch.topk(logp, k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    entries = []
    for b in range(logp.shape[0]):
        top = [(int(i), _finite(float(v))) for i, v in zip(top_ids[b].tolist(), top_values[b].tolist())]
        entries.append(TokenLogprob(int(picked[b]), _finite(chosen[b]), top))
    return entries


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else IMPOSSIBLE_LOGPROB


def warm_up(engine: Engine, prompt_ids: list[int], tokens: int = 8, timeout: float = 600.0) -> float:
    """Run one small job through the engine (compiling the model, when compile is on); returns seconds."""
    done = threading.Event()
    started = time.perf_counter()
    job = Job(prompt_ids, Settings(max_tokens=tokens, temperature=0.0, n=2),
              lambda event: done.set() if isinstance(event, (Done, Failed)) else None)
    engine.submit([job])
    done.wait(timeout)
    return time.perf_counter() - started

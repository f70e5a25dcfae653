"""The engine's model calls sent to OpenAI-compatible chat-completions servers: ``vllm serve``,
SGLang, or any server speaking that protocol (``--server URL[,URL…]``).

:class:`ServerBackend` has the backend interface of :class:`mgpo.generation.QwenBackend`
(``start`` / ``append`` / ``generate``), so the turn logic, the prompts, the box rules and the
events stay the engine's one implementation; only "continue this conversation" goes over HTTP,
through the ``openai`` package's client (``huggingface_hub``'s InferenceClient speaks the same
protocol but refuses every request under ``HF_HUB_OFFLINE=1``, which clusters that serve their
own weights often set):

- every image goes as a base64 PNG at the size the engine feeds it (its model frame: sides that
  are multiples of 28 inside the pixel limits), so a server whose processor has the same limits
  resizes nothing and a box maps back to original pixels exactly as in-process. The crop goes
  in a **user** turn, as MGPO's turn 2 is (vLLM refuses images in tool messages);
- a grounding turn stops right after its first fenced JSON block with a usable box: the stream
  is read until the delta that closes it (a token, as the in-process decode loop stops on one)
  and closed (the server sees the client go);
- greedy decoding (temperature 0), top-p and seeds are passed through; each row's seed is
  ``seed + row``, so the samples of a group differ and a rerun repeats them;
- rows run as concurrent requests, spread round-robin over the servers, at most
  ``max_in_flight`` in flight per server; deltas stream to the caller as they arrive;
- a server that refuses the connection, times out, answers 429 / 5xx or drops the stream is
  retried ``retries`` times with exponential back-off (a retried stream's text that was already
  passed on is not passed on again); then a :class:`ServerError` names the URL and the cause.
  A 4xx other than 429 is the request's fault: no retry, the server's message is shown.

Token ids and log-probs stay on the server: the rows keep the text, so the engine's events,
transcripts and evaluation work unchanged, but these rollouts cannot feed the trainer. Token
counts come from the server's usage report; a turn cut at its box has none, and counts its
streamed chunks (vLLM and SGLang send about one token per chunk).
"""

from __future__ import annotations

import base64
import io
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field

from .conversation import Conversations, Generated, Row, Sampling
from .parsing import complete_fenced_box


class ServerError(RuntimeError):
    """A model server failed every try (or refused the request): the message names the URL."""


def parse_urls(text: str | list[str] | None) -> list[str]:
    """``"http://a:8000/v1,http://b:8000/v1"`` → the list of base URLs (trailing ``/`` removed).
    A URL without ``/v1`` gets it: the OpenAI routes of vLLM and SGLang live under ``/v1``."""
    parts = text if isinstance(text, list) else (text or "").split(",")
    urls = []
    for part in (p.strip().rstrip("/") for p in parts):
        if not part:
            continue
        if not part.startswith(("http://", "https://")):
            raise ValueError(f"--server {part!r}: give the server's URL, e.g. http://127.0.0.1:8000/v1")
        if part.endswith("/chat/completions"):
            part = part[: -len("/chat/completions")]
        urls.append(part if part.endswith("/v1") else part + "/v1")
    if not urls:
        raise ValueError("--server: no URL given (comma-separated URLs, e.g. http://127.0.0.1:8000/v1)")
    return urls


def image_part(image) -> dict:
    """An OpenAI ``image_url`` content part holding ``image`` as a base64 PNG, pixel for pixel."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def openai_message(message: dict) -> dict:
    """An engine chat message (``{"type": "image", "image": PIL}`` / ``{"type": "text"}`` parts)
    as the OpenAI chat-completions protocol writes it."""
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    if message["role"] == "assistant" or all(c.get("type") == "text" for c in content):
        text = "".join(c.get("text", "") for c in content)
        return {"role": message["role"], "content": text}
    parts = [image_part(c["image"]) if c.get("type") == "image" else {"type": "text", "text": c["text"]}
             for c in content]
    return {"role": message["role"], "content": parts}


@dataclass
class _Server:
    url: str
    slots: threading.Semaphore
    requests: int = 0
    failures: int = 0


@dataclass
class _Turn:
    """One row's request in flight: what reached the caller so far."""

    row: int
    text: str = ""
    stop: str = "eos"
    tokens: int = 0
    prompt_tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)


class ServerBackend:
    """Conversations whose turns a chat-completions server generates (see the module doc)."""

    def __init__(self, urls: str | list[str], model: str | None = None, *, max_in_flight: int = 8, retries: int = 3,
                 timeout: float = 300.0, backoff: float = 1.0, api_key: str | None = None, client_factory=None):
        self.urls = parse_urls(urls)
        import openai  # noqa: F401 — here, once: threads importing it at the same time race on httpx
        import openai.types.chat  # noqa: F401
        if max_in_flight < 1 or retries < 0 or timeout <= 0:
            raise ValueError("server settings: max_in_flight ≥ 1, retries ≥ 0 and timeout > 0")
        self.model = model                 # the served model's name (None: the server's only one)
        self.retries, self.timeout, self.backoff, self.api_key = retries, timeout, backoff, api_key
        self.servers = [_Server(u, threading.Semaphore(max_in_flight)) for u in self.urls]
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._client_factory = client_factory or self._client
        self._models: dict[str, str] = {}

    def _client(self, url: str):
        from openai import OpenAI

        # our own retries (round-robin over the servers, the stream's text kept): the client's off
        return OpenAI(base_url=url, api_key=self.api_key or "EMPTY", timeout=self.timeout, max_retries=0)

    def _model_name(self, client, url: str) -> str:
        """``--server-model``, else the server's only model (``GET /v1/models``), asked once per URL."""
        if self.model:
            return self.model
        with self._lock:
            name = self._models.get(url)
        if name is None:
            models = [m.id for m in client.models.list().data]
            if len(models) != 1:
                raise ServerError(f"{url} serves {len(models)} models ({', '.join(models)}): pick one with --server-model")
            name = self._models[url] = models[0]
        return name

    @property
    def description(self) -> str:
        return ", ".join(self.urls)

    # ----- the backend interface -------------------------------------------------------------

    def start(self, prompts: list[list[dict]], group_size: int = 1) -> Conversations:
        rows, history = [], {}
        for i, messages in enumerate(prompts):
            for g in range(group_size):
                r = i * group_size + g
                history[r] = list(messages)
                rows.append(Row())
        convs = Conversations(rows)
        convs.history = history
        return convs

    def append(self, convs: Conversations, index: int, message: dict) -> None:
        convs.history[index].append(message)

    def reset_cache(self, convs: Conversations) -> None:
        pass

    def generate(self, convs: Conversations, rows: list[int], sampling: Sampling, stop_on_box=frozenset()):
        """Generate one assistant turn for each of ``rows``, concurrently: yields ``(row, delta)``
        as the servers stream and returns ``{row: Generated}``. Closing it stops waiting (requests
        in flight finish on their threads and are dropped)."""
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        turns = {r: _Turn(r) for r in rows}
        threads = [threading.Thread(target=self._run_row, daemon=True,
                                    args=(convs.history[r], turns[r], sampling, r in stop_on_box, events, stop))
                   for r in rows]
        for t in threads:
            t.start()
        out: dict[int, Generated] = {}
        pending = set(rows)
        try:
            while pending:
                kind, row, value = events.get()
                if kind == "delta":
                    yield row, value
                elif kind == "error":
                    raise value
                else:
                    t = turns[row]
                    out[row] = Generated(t.text, [], [], t.stop, t.prompt_tokens, 0.0, time.perf_counter() - t.t0,
                                         new_tokens=t.tokens)
                    convs.history[row].append({"role": "assistant", "content": [{"type": "text", "text": t.text}]})
                    pending.discard(row)
        finally:
            stop.set()      # an error or a closed generator: the other requests stop reading
        return out

    # ----- one request, with retries ----------------------------------------------------------

    def _pick(self) -> _Server:
        with self._lock:
            start = next(self._next)
        order = [self.servers[(start + k) % len(self.servers)] for k in range(len(self.servers))]
        for s in order:                       # round-robin, skipping full servers when another has room
            if s.slots.acquire(blocking=False):
                return s
        order[0].slots.acquire()
        return order[0]

    def _run_row(self, history, turn: _Turn, sampling: Sampling, cut_at_box: bool, events, stop) -> None:
        try:
            self._request(history, turn, sampling, cut_at_box, events, stop)
            events.put(("done", turn.row, None))
        except BaseException as e:  # noqa: BLE001 — passed to the caller's thread
            events.put(("error", turn.row, e))

    def _request(self, history, turn: _Turn, sampling: Sampling, cut_at_box: bool, events, stop) -> None:
        import openai

        messages = [openai_message(m) for m in history]
        kw = dict(max_tokens=sampling.max_new_tokens, temperature=max(0.0, sampling.temperature),
                  stream=True, stream_options={"include_usage": True})
        if sampling.temperature > 0 and sampling.top_p < 1.0:
            kw["top_p"] = sampling.top_p
        if sampling.seed is not None:
            kw["seed"] = sampling.seed + turn.row
        if sampling.temperature > 0 and sampling.top_k:
            kw["extra_body"] = {"top_k": sampling.top_k}
        last = ""
        for attempt in range(self.retries + 1):
            if stop.is_set():
                return
            server = self._pick()
            server.requests += 1
            text, finish, chunks = "", None, 0
            try:
                with self._client_factory(server.url) as client:
                    model = self._model_name(client, server.url)
                    with client.chat.completions.create(model=model, messages=messages, **kw) as stream:
                        for chunk in stream:
                            if stop.is_set():
                                return
                            if chunk.usage:
                                turn.prompt_tokens = chunk.usage.prompt_tokens or 0
                                turn.tokens = chunk.usage.completion_tokens or 0
                            if not chunk.choices:
                                continue
                            choice = chunk.choices[0]
                            finish = choice.finish_reason or finish
                            delta = (choice.delta.content or "") if choice.delta else ""
                            if not delta:
                                continue
                            text += delta
                            chunks += 1
                            if len(text) <= len(turn.text):       # a retry catching up with what was passed on
                                if not turn.text.startswith(text):
                                    raise ServerError(f"{server.url}: a retried stream wrote other text than the "
                                                      "first try; decode greedily or with a seed to retry streams")
                                continue
                            if not text.startswith(turn.text):
                                raise ServerError(f"{server.url}: a retried stream wrote other text than the first "
                                                  "try; decode greedily or with a seed to retry streams")
                            events.put(("delta", turn.row, text[len(turn.text):]))
                            turn.text = text
                            if cut_at_box and "`" in delta and complete_fenced_box(text) is not None:
                                turn.stop = "box"     # up to the token that closed the block, as in-process
                                turn.tokens = chunks  # no usage before the end: a chunk is about a token
                                return
                if finish is None:
                    raise ConnectionError("the stream ended before its finish reason (dropped)")
                turn.stop = "length" if finish == "length" else "eos"
                return
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code != 429:
                    raise ServerError(f"{server.url} refused the request (HTTP {e.status_code}): "
                                      f"{str(e.message)[:500]}") from None
                last = f"HTTP {e.status_code}"
            except ServerError:
                raise
            except Exception as e:  # noqa: BLE001 — timeouts, refused connections, dropped streams
                last = f"{type(e).__name__}: {str(e)[:200]}"
            finally:
                server.slots.release()
            server.failures += 1
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise ServerError(f"{server.url}: no answer after {self.retries + 1} tries (last: {last}). Is the server "
                          "up? Check the URL, or start it (docs/usage.md: serving with vLLM or SGLang).")


# ----- command lines ----------------------------------------------------------------------------

def add_arguments(p) -> None:
    """The ``--server`` flags of ``mgpo.infer``, ``mgpo.eval`` and ``app.py``."""
    g = p.add_argument_group("a model server instead of loading the model here (vLLM, SGLang: docs/usage.md)")
    g.add_argument("--server", default=None, metavar="URL[,URL…]",
                   help="OpenAI-compatible chat-completions server(s), e.g. http://127.0.0.1:8000/v1; several "
                        "(comma-separated) share the requests")
    g.add_argument("--server-model", default=None, metavar="NAME",
                   help="the served model's name (vllm serve --served-model-name, or a --lora-modules name); "
                        "default: the server's only model")
    g.add_argument("--max-in-flight", type=int, default=8, help="requests in flight per server (default 8)")
    g.add_argument("--server-retries", type=int, default=3,
                   help="tries after a refused connection, timeout, 429/5xx or dropped stream (default 3)")
    g.add_argument("--server-timeout", type=float, default=300.0, help="seconds per request (default 300)")


def server_kwargs(args) -> dict:
    return dict(max_in_flight=args.max_in_flight, retries=args.server_retries, timeout=args.server_timeout)


def served_name(args) -> str:
    """What a run on a server calls its model (results and transcripts record it)."""
    return f"served:{args.server_model or 'default'}"

"""Model backends: the Anthropic Messages API (official SDK) and the `claude -p` CLI.

A backend makes one attempt; retries belong to `workers.retry`. Both report token
usage as {input, output, cache_write, cache_read} and call `on_started` once the
model's response has begun — the moment a prompt-cache entry exists — so the
orchestrator can warm the shared prefix with one call before fanning out the rest.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import anthropic
import anyio
import httpx2
from anthropic.lib.streaming import AsyncMessageStreamManager

from workers.prompts import ReviewerPrompt
from workers.request_body import request_body
from workers.retry import ModelCallError

BACKEND_NAMES = ("anthropic", "anthropic-batch", "claude-cli")
USAGE_KEYS = ("input", "output", "cache_write", "cache_read")

OnStarted = Callable[[], None]


@dataclass(frozen=True, slots=True)
class CallSettings:
    """How to call the model: JSON-ready so it can travel in a queued job."""

    backend: str
    model: str
    max_tokens: int
    max_findings: int = 25
    max_attempts: int = 3
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 30.0
    request_timeout: float = 600.0
    claude_executable: str = "claude"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallSettings:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    text: str
    stop_reason: str | None
    usage: dict[str, int]

    @classmethod
    def from_message(cls, message: Any) -> ModelAnswer:
        """The text blocks, stop reason and usage (in `USAGE_KEYS` terms) of an SDK
        `Message`, whether it came from a stream or from a batch result."""
        text = "".join(b.text for b in message.content if getattr(b, "type", None) == "text")
        u = message.usage
        usage = {
            "input": u.input_tokens or 0,
            "output": u.output_tokens or 0,
            "cache_write": u.cache_creation_input_tokens or 0,
            "cache_read": u.cache_read_input_tokens or 0,
        }
        return cls(text, message.stop_reason, usage)


class Backend(Protocol):
    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        """One attempt at one reviewer call."""
        ...

    async def aclose(self) -> None: ...


def zero_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_KEYS, 0)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The SDK's default verified TLS context, built once per process.

    Loading the CA bundle costs tens of milliseconds per client, and a queue worker
    builds a client per job (`workers.rq_worker` builds this once at start-up).
    """
    return httpx2.create_ssl_context()


@functools.cache
def sdk_platform() -> Any:
    """The OS the SDK names in its `X-Stainless-OS` header, found once per process.

    An `AsyncAnthropic` client looks it up on its first request in a thread of the
    event loop's default pool, and closing the loop then joins that pool from another
    new thread. A queue worker builds a client and an event loop per job, so both
    threads would start in every job, on the way to the model call and on the way to
    the job's end (what releases the next wave); given the answer, the client starts
    neither.
    """
    from anthropic._base_client import get_platform

    return get_platform()


class AnthropicBackend:
    """Streams `messages.create` through `AsyncAnthropic`.

    The client reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment
    and is built with `max_retries=0`: our retry policy is the only one.
    """

    def __init__(self, settings: CallSettings, client: anthropic.AsyncAnthropic | None = None):
        self.settings = settings
        self.client = client or anthropic.AsyncAnthropic(
            max_retries=0,
            timeout=settings.request_timeout,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context()),
        )
        if getattr(self.client, "_platform", False) is None:  # not looked up yet
            self.client._platform = sdk_platform()

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        # The request `messages.stream(...)` would make, with the body pre-encoded
        # (workers.request_body); the SDK still sends it and parses the event stream.
        response = self.client.post(
            "/v1/messages",
            cast_to=anthropic.types.Message,
            content=request_body(prompt, self.settings.model, self.settings.max_tokens),
            options={"headers": {"content-type": "application/json"}},
            stream=True,
            stream_cls=anthropic.AsyncStream[anthropic.types.RawMessageStreamEvent],
        )
        async with AsyncMessageStreamManager(response) as stream:
            # The stream opens once the API has answered 200: the response has started,
            # so its prompt-cache entries exist. Signalling here, before the first event
            # is read, lets waiting calls go out without the SDK's event parsing first.
            if on_started is not None:
                on_started()
            message = await stream.get_final_message()
        return ModelAnswer.from_message(message)

    async def aclose(self) -> None:
        await self.client.close()


class ClaudeCliBackend:
    """Runs `claude -p --output-format json` with the whole prompt on stdin.

    The CLI has no separate cacheable blocks; it gets the same text in the same
    order (shared parts first), so its own prompt caching sees a stable prefix.
    """

    def __init__(self, settings: CallSettings) -> None:
        self.settings = settings

    def command(self) -> list[str]:
        exe = shutil.which(self.settings.claude_executable)
        if exe is None:
            raise ModelCallError(
                f"`{self.settings.claude_executable}` is not on PATH", retryable=False
            )
        return [exe, "-p", "--output-format", "json", "--model", self.settings.model]

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        command = self.command()
        stdin = prompt.plain_text().encode("utf-8")
        try:
            with anyio.fail_after(self.settings.request_timeout):
                result = await anyio.run_process(command, input=stdin, check=False)
        except* (anyio.BrokenResourceError, BrokenPipeError, ConnectionResetError) as group:
            raise ModelCallError(
                f"claude exited before reading the whole prompt: {group.exceptions[0]!r}",
                retryable=True,
            ) from None
        if on_started is not None:
            on_started()
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            raise ModelCallError(
                f"claude exited with status {result.returncode}: {stderr[-500:]}", retryable=True
            )
        return parse_cli_output(result.stdout.decode("utf-8", "replace"))

    async def aclose(self) -> None:
        return None


def parse_cli_output(stdout: str) -> ModelAnswer:
    """The answer and usage from `claude -p --output-format json` (plain text accepted)."""
    try:
        envelope = json.loads(stdout)
    except json.JSONDecodeError:
        return ModelAnswer(stdout, None, zero_usage())
    if not isinstance(envelope, dict) or "result" not in envelope:
        return ModelAnswer(stdout, None, zero_usage())
    if envelope.get("is_error"):
        raise ModelCallError(
            f"claude reported an error: {str(envelope.get('result'))[:500]}", retryable=True
        )
    raw = envelope.get("usage") or {}
    usage = {
        "input": int(raw.get("input_tokens") or 0),
        "output": int(raw.get("output_tokens") or 0),
        "cache_write": int(raw.get("cache_creation_input_tokens") or 0),
        "cache_read": int(raw.get("cache_read_input_tokens") or 0),
    }
    stop = envelope.get("stop_reason")
    return ModelAnswer(str(envelope["result"]), stop if isinstance(stop, str) else None, usage)


def make_backend(settings: CallSettings) -> Backend:
    if settings.backend == "anthropic":
        return AnthropicBackend(settings)
    if settings.backend == "claude-cli":
        return ClaudeCliBackend(settings)
    if settings.backend == "anthropic-batch":
        from workers.batch_backend import AnthropicBatchBackend  # it imports this module

        return AnthropicBatchBackend(settings)
    raise ValueError(
        f"backend: must be one of {', '.join(BACKEND_NAMES)}, got {settings.backend!r}"
    )


class NoBackendAvailable(RuntimeError):
    """Neither an API key nor the `claude` CLI is available."""


NO_BACKEND_MESSAGE = (
    "no model backend available: set ANTHROPIC_API_KEY (e.g. `export "
    "ANTHROPIC_API_KEY=sk-ant-...`; ANTHROPIC_BASE_URL selects another endpoint) to use "
    "the Anthropic API, or install and log in to the Claude Code CLI so `claude` is on "
    "PATH (--backend claude-cli). To see the prompts, sizes and estimated cost without "
    "calling a model, use --dry-run."
)


def resolve_backend(requested: str, claude_executable: str = "claude") -> str:
    """The concrete backend for `requested` (auto/anthropic/claude-cli) in this environment."""
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))
    has_cli = shutil.which(claude_executable) is not None
    if requested == "auto":
        if has_key:
            return "anthropic"
        if has_cli:
            return "claude-cli"
        raise NoBackendAvailable(NO_BACKEND_MESSAGE)
    if requested in ("anthropic", "anthropic-batch") and not has_key:
        raise NoBackendAvailable(
            f"backend {requested}: ANTHROPIC_API_KEY is not set. " + NO_BACKEND_MESSAGE
        )
    if requested == "claude-cli" and not has_cli:
        raise NoBackendAvailable(
            f"backend claude-cli: `{claude_executable}` is not on PATH. " + NO_BACKEND_MESSAGE
        )
    if requested not in BACKEND_NAMES:
        raise ValueError(
            f"backend: must be one of auto, {', '.join(BACKEND_NAMES)}, got {requested!r}"
        )
    return requested

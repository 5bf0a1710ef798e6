"""Connecting to Redis: one quick PING first, so a wrong URL is an error, not a hang.

Kept free of the review engine's imports (the model SDK alone takes seconds to
import on a busy machine), so `moneta-review` can check Redis before loading them.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry as RedisRetry

CONNECT_TIMEOUT = 2.0


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached (or refused us): the message says where and what to do."""


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def check_reachable(url: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """One PING without retries; RedisUnavailable (or ValueError for a bad URL) if it fails."""
    if not isinstance(url, str) or not url:
        raise ValueError("redis_url: must be a non-empty redis:// or rediss:// URL")
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"redis_url: scheme must be redis, rediss or unix, got {url!r}")
    probe = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=RedisRetry(NoBackoff(), 0),
    )
    try:
        probe.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(
            f"Redis at {redact_url(url)} refused the credentials ({exc}); put the password "
            "in the URL (redis://:PASSWORD@host:6379/0)"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {redact_url(url)}: {exc}. Start redis-server (or "
            "`docker compose up redis`), or pass --redis-url / set REDIS_URL to a reachable "
            "server; without a Redis URL the review runs embedded, in one process."
        ) from exc
    except redis.ResponseError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} answered an error: {exc}") from exc
    except redis.RedisError as exc:  # e.g. another protocol answered: not a Redis server
        raise RedisUnavailable(
            f"{redact_url(url)} does not answer as a Redis server ({exc}); check --redis-url "
            "/ REDIS_URL"
        ) from exc
    finally:
        probe.close()


def connect(url: str, *, timeout: float = CONNECT_TIMEOUT) -> redis.Redis:
    """A client for `url`, after one PING that must answer within about `timeout` s.

    The returned client retries briefly on connection errors, so a Redis restart
    mid-run is ridden out.
    """
    check_reachable(url, timeout=timeout)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        health_check_interval=15,
        retry=RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), 30),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )

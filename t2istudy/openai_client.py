"""The rules every OpenAI-compatible call in t2istudy follows: the key, the retries, the sqlite cache.

Why one module: VQAScore (scoring/) and the prompt upsampler (text/) both talk to OpenAI-compatible
servers, and a rule written twice drifts. It sits below every layer (like ``figure_files``), so both may
import it. What it fixes:

- **Key:** read once from an environment variable, before any work; it lives only inside the client
  object and is never written to options, caches, tables or logs. A missing key fails at once.
- **Retries:** ours, not the client's (``max_retries=0``), so the policy is explicit and tested: 429,
  5xx, timeouts, connection errors and malformed bodies are retried up to ``max_attempts`` times with
  exponential backoff (``backoff_s * 2**k``, capped, with jitter; a 429's ``Retry-After`` is honoured up
  to the cap). Other 4xx fail that item at once; 401/403 stop the run (:class:`Fatal`).
- **Cache:** an sqlite file opened with a clear error when it is not one, written under a lock, each
  answer committed as it arrives so an interrupted run never pays twice.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import openai

T = TypeVar("T")


class Retryable(Exception):
    """A transient failure: worth another attempt (after ``wait_s`` if the server said so)."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class Fatal(Exception):
    """Stops the whole run (bad key, no permission)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0


def read_api_key(env_var: str, who: str) -> str:
    """The key from ``env_var``; raises before any work if it is missing (``who`` names the caller)."""
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ValueError(
            f"{who} needs an API key in the environment variable {env_var}; "
            f"export it before starting (it is read from the environment only and never stored). "
            f"For a local OpenAI-compatible server any non-empty value works."
        )
    return key


def make_client(api_key_env: str, who: str, base_url: str | None, timeout_s: float) -> openai.OpenAI:
    """An ``openai.OpenAI`` client with its own retries off (ours apply) and the key from the environment."""
    key = read_api_key(api_key_env, who)
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)


def call_classified(request: Callable[[], T], api_key_env: str, model: str) -> T:
    """Run one request, turning the client's exceptions into :class:`Retryable`, :class:`Fatal` or
    ``RuntimeError`` (this item failed, do not retry)."""
    try:
        return request()
    except openai.RateLimitError as err:
        raise Retryable("429 rate limited", retry_after(err)) from err
    except openai.APITimeoutError as err:
        raise Retryable("timeout") from err
    except openai.APIConnectionError as err:
        raise Retryable(f"connection error ({err})") from err
    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
        raise Fatal(
            f"The server refused the key from {api_key_env} "
            f"(HTTP {err.status_code}); check the key and the model {model!r}."
        ) from err
    except openai.APIStatusError as err:
        if err.status_code >= 500:
            raise Retryable(f"HTTP {err.status_code}") from err
        raise RuntimeError(f"HTTP {err.status_code}: {err.message}") from err
    except (openai.APIResponseValidationError, ValueError) as err:
        raise Retryable(f"malformed response ({err})") from err


def with_retries(attempt: Callable[[], T], policy: RetryPolicy, on_retry: Callable[[], None]) -> T:
    """``attempt()`` until it stops raising :class:`Retryable`, at most ``policy.max_attempts`` times."""
    for k in range(policy.max_attempts):
        try:
            return attempt()
        except Retryable as err:
            if k == policy.max_attempts - 1:
                raise RuntimeError(f"gave up after {policy.max_attempts} attempts (last: {err})") from err
            delay = min(policy.backoff_max_s, policy.backoff_s * 2**k) * (0.5 + random.random() / 2)
            if err.wait_s is not None:
                delay = min(policy.backoff_max_s, max(delay, err.wait_s))
            on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")


def retry_after(err: openai.APIStatusError) -> float | None:
    try:
        return float(err.response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


SQLITE_WAIT_S = 60.0  # how long a cache waits for another process's write lock before saying it is locked


class SqliteCache:
    """One sqlite file holding one table (``schema`` creates it); subclasses add ``get`` and ``put``.

    Shared by threads (``check_same_thread=False``) behind ``self.lock``; each write is committed at once.
    """

    table = ""  # the table's name, for __len__

    def __init__(self, path: str | Path, schema: str, what: str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # another process writing the file holds its lock: wait for it (sqlite's busy timeout)
            self.db = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_WAIT_S)
            self.db.execute(schema)
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):  # a healthy file in use, never "corrupt"
                raise RuntimeError(
                    f"{what} cache {path} is locked by another process (still locked after "
                    f"{SQLITE_WAIT_S:g} s): wait for that process to finish (another run or notebook using "
                    "the same cache), or give this one its own cache path. The file is fine; keep it."
                ) from err
            raise ValueError(
                f"{what} cache {path} is not a usable sqlite file ({err}); move it away."
            ) from err
        except sqlite3.DatabaseError as err:
            raise ValueError(
                f"{what} cache {path} is not a usable sqlite file ({err}); move it away."
            ) from err
        self.path = path
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return int(self.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])  # noqa: S608

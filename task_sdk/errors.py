"""Exceptions a handler raises to choose how a failure is recorded."""

from __future__ import annotations


class SkipRetry(Exception):  # noqa: N818 - named after asynq's SkipRetry sentinel
    """Fail the task permanently: the agent archives it without further retries.

    ``raise SkipRetry("invoice 42 does not exist")`` records the message as the task's error.
    """


class RetryAfter(Exception):  # noqa: N818 - reads as an instruction: "retry after N seconds"
    """Fail the task and ask for the next attempt in ``seconds`` (instead of asynq's backoff).

    The retry still counts against the task's ``max_retry``; once retries are exhausted the
    task is archived as usual.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        seconds = float(seconds)
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"RetryAfter needs a delay of 0 seconds or more, got {seconds!r}")
        super().__init__(message or f"retry requested in {seconds:g}s")
        self.seconds = seconds
        self.message = message or f"retry requested in {seconds:g}s"

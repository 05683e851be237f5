"""``@task`` and ``@load``: what the child serves and what it prepares before serving."""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing, inspect and dataclasses stay unimported: child start-up cost
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., Any])

_CO_VARARGS, _CO_COROUTINE = 0x04, 0x80

DEFAULT = "*"
"""Name under which the default handler (plain ``@task``) is registered and reported."""


class Handler(namedtuple("Handler", "name func is_async ctx_mode batch", defaults=(None,))):
    """A registered handler and how to call it. ``ctx_mode``: "none": handler(payload);
    "positional": handler(payload, ctx); "keyword": handler(payload, ctx=...).
    ``batch``: ``(size, max_wait)`` for a batched handler (task_sdk/batching.py), else None."""

    __slots__ = ()


_handlers: dict[str, Handler] = {}
_loader: Callable[[], Any] | None = None


def _ctx_mode(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    if code is not None and type(func).__name__ == "function" and not hasattr(func, "__wrapped__"):
        # a plain function: read its code object (what inspect.signature would report)
        positional = code.co_argcount  # positional-only ones included
        if positional >= 2 or code.co_flags & _CO_VARARGS:
            return "positional"
        keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        return "keyword" if "ctx" in keyword_only else "none"
    return _ctx_mode_by_signature(func)  # partials, classes, methods, wrapped functions


def _ctx_mode_by_signature(func: Callable[..., Any]) -> str:
    """The general answer, from ``inspect.signature``."""
    import inspect

    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: call with the payload only
        return "none"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        return "positional"
    if any(p.name == "ctx" and p.kind is p.KEYWORD_ONLY for p in params):
        return "keyword"
    return "none"


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction`` without importing inspect for plain functions."""
    code = getattr(func, "__code__", None)
    if code is not None and type(func).__name__ == "function":
        return bool(code.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(func)


def _register(name: str, func: F, batch: tuple[int, float] | None = None) -> F:
    if not callable(func):
        raise TypeError(f"@task must decorate a function, got {type(func).__name__}")
    if not name:
        raise ValueError("@task name must be a non-empty string (use plain @task for the default)")
    _handlers[name] = Handler(
        name=name,
        func=func,
        is_async=is_coroutine_function(func),
        ctx_mode=_ctx_mode(func),
        batch=batch,
    )
    return func


if TYPE_CHECKING:

    @overload
    def task(func: F, /) -> F: ...
    @overload
    def task(type_name: str, /) -> Callable[[F], F]: ...
    @overload
    def task(*, name: str | None = None, batch: int | None = None,
             max_wait: float | None = None) -> Callable[[F], F]: ...


def task(arg: Any = None, /, *, name: str | None = None, batch: int | None = None,
         max_wait: float | None = None) -> Any:
    """Register a task handler.

    * ``@task`` registers the default handler: it runs every task type that has no handler of
      its own (and every task of a runqy-style deployment, where the type is the queue name).
    * ``@task("email:send")`` or ``@task(name="email:send")`` registers the handler for one
      asynq task type, so one child process can serve several types.

    A handler is ``def handler(payload)`` or ``def handler(payload, ctx)`` (``ctx`` is what the
    ``@load`` function returned), and may be ``async def``. ``payload`` is the task payload
    decoded from JSON, or ``bytes`` when the payload is not JSON.
    Registering the same name twice keeps the later handler.

    ``@task("embed", batch=32, max_wait=0.01)`` makes a batched handler: it gets a list of up
    to 32 payloads (the agent waits at most ``max_wait`` seconds for a batch to fill) and
    returns a list of results in the same order (see ``task_sdk.batching``).
    """
    if callable(arg) and name is None and batch is None and max_wait is None:
        return _register(DEFAULT, arg)
    if arg is not None and name is not None:
        raise TypeError("@task takes the task type either positionally or as name=, not both")
    chosen = arg if arg is not None else name
    if chosen is not None and not isinstance(chosen, str):
        raise TypeError(f"@task name must be a string, got {type(chosen).__name__}")

    from .batching import check_options

    options = check_options(chosen if chosen is not None else DEFAULT, batch, max_wait)

    def decorate(func: F) -> F:
        return _register(chosen if chosen is not None else DEFAULT, func, options)

    return decorate


def load(func: F) -> F:
    """Register the start-up function: it runs once, before the child reports ready.

    Use it for slow preparation (loading a model, opening a connection pool). Its return value
    is passed as ``ctx`` to every handler that accepts a second argument (or a keyword-only
    ``ctx``). It may be ``async def``. If it raises, the child reports the error to the agent and
    exits. Registering a second loader replaces the first.
    """
    global _loader
    if not callable(func):
        raise TypeError(f"@load must decorate a function, got {type(func).__name__}")
    _loader = func
    return func


def handlers() -> dict[str, Handler]:
    """The registered handlers by task type (``"*"`` is the default handler)."""
    return dict(_handlers)


def loader() -> Callable[[], Any] | None:
    """The registered ``@load`` function, if any."""
    return _loader


def find_handler(task_type: str) -> Handler | None:
    """The handler for ``task_type``: its own, else the default, else ``None``."""
    found = _handlers.get(task_type)
    if found is None and task_type == "rundown:aggregate":  # the agent's group aggregation
        from .aggregating import handler

        found = handler()
    return found or _handlers.get(DEFAULT)


def clear() -> None:
    """Forget every handler and the loader (for tests)."""
    global _loader
    _handlers.clear()
    _loader = None

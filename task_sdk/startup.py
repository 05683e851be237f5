"""Report a crash during the user's module import to the agent as a startup error."""

from __future__ import annotations

import contextlib
import sys

from .channel import protocol_channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType


def install_startup_error_hook() -> None:
    """Isolate the protocol now and hook ``sys.excepthook`` for errors raised before ready.

    Without this, an exception in the deployed module (say, a missing dependency imported after
    ``task_sdk``) would only show as "process exited during startup" on the agent side; with it
    the agent gets ``{"status": "error", "error": "ModuleNotFoundError: No module named 'x'"}``.
    """
    channel = protocol_channel()
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not channel.ready_sent and not issubclass(exc_type, KeyboardInterrupt):
            import traceback

            message = traceback.format_exception_only(exc_type, exc)[-1].strip()
            with contextlib.suppress(OSError):
                channel.send({"status": "error", "error": message})
        previous(exc_type, exc, tb)

    sys.excepthook = hook

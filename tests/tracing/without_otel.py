"""Run a program as if ``opentelemetry`` were not installed (every import of it fails):
``python without_otel.py agent -config FILE`` runs the agent, ``... check REDIS_URL`` checks
the producer side and task_sdk, printing "ok"."""

import os
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r} (blocked for this test)")
        return None


sys.meta_path.insert(0, _Blocked())
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def check(url: str) -> None:
    os.environ["OTEL_TRACES_EXPORTER"] = "console"
    from task_sdk import tracing as sdk_tracing

    assert sdk_tracing.wanted({"traceparent": TP}) is False

    from agent import tracing
    from agent.client import Client
    from agent.tracing import producer

    assert tracing.setup() is False and not producer.available()
    with Client(url) as client:
        info = client.enqueue("x", {"n": 1})
        assert client.get_task("default", info.id).headers == {}
        info = client.enqueue("x", {"n": 1}, headers={"traceparent": TP})
        assert client.get_task("default", info.id).headers == {"traceparent": TP}
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        from agent.cli import main

        sys.argv = ["rundown-agent", *sys.argv[2:]]
        main()

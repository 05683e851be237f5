"""The examples shipped inside the package, so ``rundown-agent demo`` and the README's control
server walkthrough work from a wheel as well as from a checkout.

* :data:`TASKS_DIR`: example task code (``worker.py``, ``requirements.txt``), deployed by the
  demo and by the example queues file.
* :data:`QUEUES_FILE`: the example queues file of ``rundown-server`` (every key commented).
* :data:`AGENT_CONFIG`: an agent config that registers with that server.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AGENT_CONFIG", "EXAMPLES_DIR", "QUEUES_FILE", "TASKS_DIR"]

EXAMPLES_DIR = Path(__file__).resolve().parent
TASKS_DIR = EXAMPLES_DIR / "tasks"
QUEUES_FILE = EXAMPLES_DIR / "server-queues.yml"
AGENT_CONFIG = EXAMPLES_DIR / "agent.yml"

"""rundown-server: the reference control server of rundown-agent.

``create_app(settings)`` builds the Starlette app, ``load_queues_file(path)`` reads the queues
file, ``ServerThread(app)`` runs it in a background thread (demos, tests), and the
``rundown-server`` console script (``agent.server.cli:main``) runs it in the foreground.
"""

from agent.server.app import create_app
from agent.server.queues import QueuesFileError, ServerSettings, load_queues_file, parse_queues
from agent.server.runner import ServerThread

__all__ = ["QueuesFileError", "ServerSettings", "ServerThread", "create_app", "load_queues_file",
           "parse_queues"]

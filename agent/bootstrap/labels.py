"""Server mode: the queues an agent's labels let it take from, among those it registered.

A queue's requirement comes from the control server (``queue.requires`` in the registration
answer, from ``requires`` in its queues file) and from the agent's own config (a queue
mapping's ``requires``); an agent lacking any of those labels never takes from the queue,
says so in a warning, and does not start the children of a parent queue it serves none of.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from agent.bootstrap.errors import RegistrationError
from agent.bootstrap.models import Registration
from agent.config.model import Config
from agent.config.placement import serve_only_labelled

log = logging.getLogger("agent.bootstrap")


def keep_labelled(registration: Registration, config: Config) -> Registration:
    requires: dict[str, tuple[str, ...]] = {p: r.requires for p, r in registration.parents.items() if r.requires}
    for spec in config.worker.queues:
        if spec.requires:
            requires[spec.name] = tuple(dict.fromkeys((*requires.get(spec.name, ()), *spec.requires)))
    if not requires:
        return registration
    kept, notes = serve_only_labelled(registration.queues, requires, config.worker.labels)
    for note in notes:
        log.warning("%s", note)
    if not kept:
        raise RegistrationError(
            "every queue this agent registered for requires labels it lacks (worker.labels: "
            f"{', '.join(config.worker.labels) or 'none'}), so it would take no task: "
            + "; ".join(notes))
    parents = {q.split(".", 1)[0] for q in kept}
    return replace(registration, queues=kept,
                   deployments={p: d for p, d in registration.deployments.items() if p in parents},
                   parents={p: r for p, r in registration.parents.items() if p in parents},
                   warnings=(*registration.warnings, *notes))

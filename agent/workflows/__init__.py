"""Workflows on asynq keys: chains, groups with a callback, and ``depends_on``.

``graph`` builds the steps, ``keys`` holds the Redis layout and scripts, ``engine`` creates
and moves workflows, ``hook`` moves them on from the agent, ``recovery`` finishes what a crash
interrupted.
"""

from agent.workflows.graph import Chain, Group, Sig, sig

__all__ = ["Chain", "Group", "Sig", "sig"]

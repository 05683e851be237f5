"""Flow control across the fleet: queue and type rates, max_running, per-key concurrency.

Every limit is checked inside the dequeue script (``lua/dequeue_flow.lua``), in the same
round trip that moves the tasks, so the agents sharing a queue together never exceed it.
A queue without limits keeps the plain dequeue script and pays nothing.
"""

from agent.broker.flow.control import FLOW_POLL, FlowControl, Throttle
from agent.broker.flow.published import publish_limits, read_flow
from agent.config.flow import KEY_HEADER, FlowLimits, Rate, TypeLimit, parse_flow, parse_rate

__all__ = ["FLOW_POLL", "KEY_HEADER", "FlowControl", "FlowLimits", "Rate", "Throttle", "TypeLimit",
           "parse_flow", "parse_rate", "publish_limits", "read_flow"]

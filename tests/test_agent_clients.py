"""The agent's Redis clients: built as redis-py wants them, so a start logs no warning."""

from __future__ import annotations

import warnings

from agent.runtime.agent import Agent, AgentSettings


async def test_agent_redis_clients_raise_no_warning(redis_url):
    """redis.asyncio clients converted a sync ``redis.retry.Retry`` with a UserWarning, which
    the agent's logging turned into a WARNING line at every start."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent = Agent(AgentSettings(redis_url=redis_url), {"default": object()})
        try:
            assert await agent.redis.ping()
            assert await agent.waiter_redis.ping()
            assert agent.lease_redis.ping()
        finally:
            await agent.redis.aclose()
            await agent.waiter_redis.aclose()
            agent.lease_redis.close()
    assert [str(w.message) for w in caught] == []

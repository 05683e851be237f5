"""The agent's runtime: child-process supervision, the child protocol, task processing."""

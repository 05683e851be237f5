"""Chaos suite: agents killed, children crashing, Redis restarted, the network stalled."""

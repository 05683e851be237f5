"""rundown-agent: a worker agent for asynq-format Redis task queues."""

__version__ = "0.1.0"

"""Periodic tasks: ``schedule`` entries enqueued once per tick for the whole fleet."""

from agent.scheduler.entries import MISSED_POLICIES, ScheduleEntry, parse_schedule
from agent.scheduler.loop import Scheduler

__all__ = ["MISSED_POLICIES", "ScheduleEntry", "Scheduler", "parse_schedule"]

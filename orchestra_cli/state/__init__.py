"""The state store seam: tasks, events and the agent registry."""

from orchestra_cli.state.base import StateStore

__all__ = ["StateStore"]

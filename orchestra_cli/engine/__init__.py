"""The orchestration engine: orchestrator, agents, planner and the task service."""

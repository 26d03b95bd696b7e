"""orchestra: an operator-focused CLI for multi-agent task orchestration."""

__version__ = "0.1.0"

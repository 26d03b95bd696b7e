"""The LLM seam: providers (offline, Anthropic) and prompt templates."""

from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse

__all__ = ["LLMProvider", "LLMRequest", "LLMResponse"]

"""Consciousness Continuity Node: a self-hosted, replicated conversation server for LLM assistants."""

__version__ = "0.1.0"

"""Model backends behind one protocol: anthropic, OpenAI-compatible, offline."""

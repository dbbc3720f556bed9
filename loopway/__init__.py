"""loopway: an OpenAI Responses API server built for agent loops."""

__version__ = "0.1.0"

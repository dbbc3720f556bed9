"""Engines that forward to an OpenAI-compatible server: Chat Completions or Responses upstream."""

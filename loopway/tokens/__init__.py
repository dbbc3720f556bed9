"""Tokens: ``o200k_base`` rendering of items and the append-only sequences that hold them.

The bottom of the house beside ``protocol``: core (conversations, the pipeline) and the engines
(prefix caches, upstream token counts) both build on it, and it imports neither.
"""

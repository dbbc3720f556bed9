"""Thin transports: parse, call the core, frame, send. Nothing else lives here."""

"""The transport-agnostic core: one turn pipeline that both HTTP and WebSocket drive.

Imports nothing from Starlette, uvicorn or any socket library.
"""

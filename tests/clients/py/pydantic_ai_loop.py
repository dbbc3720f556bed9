"""pydantic-ai against loopway: an agent with a tool, over HTTP and with ``openai_transport='websocket'``.
Usage: python pydantic_ai_loop.py BASE_URL MODEL; prints JSON."""

import json
import sys

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

BASE_URL, MODEL = sys.argv[1:3]
calls: list[str] = []


def run(settings: dict) -> str:
    model = OpenAIResponsesModel(MODEL, provider=OpenAIProvider(base_url=BASE_URL, api_key="sk-test"))
    agent = Agent(model, model_settings=settings)

    @agent.tool_plain
    def read_file(path: str) -> str:
        """Read a file of the repository."""
        calls.append(path)
        return "print('hello from app.py')"

    return agent.run_sync("Please read src/app.py").output


http = run({})
websocket = run({"openai_transport": "websocket"})
print(json.dumps({"calls": calls, "http": http, "websocket": websocket}))

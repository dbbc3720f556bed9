"""langchain-openai against loopway (``use_responses_api``): a tool loop, with and without
``use_previous_response_id``. Usage: python langchain_loop.py BASE_URL MODEL; prints JSON."""

import json
import sys

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

BASE_URL, MODEL = sys.argv[1:3]


@tool
def read_file(path: str) -> str:
    """Read a file of the repository."""
    return "print('hello from app.py')"


def loop(**options: object) -> dict:
    llm = ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key="sk-test", use_responses_api=True, **options)
    bound = llm.bind_tools([read_file])
    messages = [HumanMessage("Please read src/app.py")]
    first = bound.invoke(messages)
    messages.append(first)
    for call in first.tool_calls:
        messages.append(ToolMessage(read_file.invoke(call["args"]), tool_call_id=call["id"]))
    second = bound.invoke(messages)
    return {"calls": [(c["name"], c["args"]) for c in first.tool_calls], "answer": second.text}


print(json.dumps({"plain": loop(), "chained": loop(use_previous_response_id=True)}))

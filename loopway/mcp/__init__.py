"""Remote MCP servers, as loopway reaches them: which it may (``allow``), how (``network``,
``client``), and for how long a session stays open (``sessions``).

The client is a small JSON-RPC client of MCP's streamable HTTP transport on ``httpx``, not the
``mcp`` package's: loopway must bound every byte an MCP server sends (a response is read up to a cap,
then dropped), pin each connection to the address it vetted, and keep the server's import path free
of the ``mcp`` package's dependencies (pydantic, anyio task groups, sse-starlette). The ``mcp``
package is the reference it is tested against: its server runs in the tests, and its own client
lists and calls the same tools there.
"""

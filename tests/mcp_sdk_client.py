#!/usr/bin/env python3
"""Drive `sync-process mcp` with the official MCP Python SDK, as an assistant's client would.

Needs the SDK: python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install 'mcp>=2.3,<3'
Usage: mcp_sdk_client.py COMMAND [ARGS...]
  e.g. target/mcp-venv/bin/python3 tests/mcp_sdk_client.py target/debug/sync-process --env-file my.env mcp

Runs the server twice, once per era of the protocol: the 2025-11-25 handshake (ClientSession.initialize, then
ping) and the 2026-07-28 per-request form (ClientSession.discover). Each time it lists the tools and calls every
read-only one (plus discard_quarantined of an id that does not exist, which must come back as an error result,
whether writes are enabled or not). The SDK itself validates each structured result against the tool's
outputSchema. The server's environment is this process's. Prints one JSON object with what it saw on stdout
(tests/it/mcp.rs checks it); exits 1 with a traceback if the SDK rejects anything.
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CALLS = [
    ("get_status", {}),
    ("check_health", {}),
    ("list_recent_cycles", {"limit": 5}),
    ("list_quarantined", {"limit": 5}),
    ("get_config", {}),
    ("discard_quarantined", {"ids": [987654321]}),
]


async def session_run(era: str, argv: list[str]) -> dict:
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
    seen: dict = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            if era == "legacy":
                init = await session.initialize()
                seen["protocol_version"] = init.protocol_version
                seen["server_name"] = init.server_info.name
                seen["instructions"] = init.instructions
                await session.send_ping()
            else:
                found = await session.discover()
                seen["supported_versions"] = found.supported_versions
            listed = await session.list_tools()
            seen["tools"] = {
                t.name: {
                    "read_only": t.annotations.read_only_hint if t.annotations else None,
                    "destructive": t.annotations.destructive_hint if t.annotations else None,
                    "output_schema": t.output_schema is not None,
                }
                for t in listed.tools
            }
            results = {}
            for name, args in CALLS:
                r = await session.call_tool(name, args)
                results[name] = {
                    "is_error": bool(r.is_error),
                    "structured": r.structured_content,
                    "text": "\n".join(c.text for c in r.content if c.type == "text"),
                }
            seen["results"] = results
    return seen


async def main(argv: list[str]) -> int:
    out = {era: await session_run(era, argv) for era in ("legacy", "modern")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(sys.argv[1:])))

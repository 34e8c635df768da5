"""KSI's events as MCP tools, whatever carries MCP: the part both MCP servers share.

    catalog.py    which of the daemon's `tools:list` a caller is offered (pure)
    callers.py    who a request comes from: its tools, and the agent its calls act for
    daemon.py     the Protocol a server talks to the daemon through
    results.py    a KSI reply or error as an MCP tool result, a tool as an MCP listing (pure)
    resources.py  KSI things as MCP resources, `ksi://...` (pure)
    server.py     the MCP server: tools, resources, list-changed and resource notifications

Two servers use it: `interfaces/mcp_server.py` (stdio, a socket client of the daemon:
interfaces/mcp_bridge/) and the daemon's `mcp` plugin (streamable HTTP, events through its
plugin context: ksi_daemon/plugins/mcp/). Not called `mcp`: that name is the MCP SDK's.
"""

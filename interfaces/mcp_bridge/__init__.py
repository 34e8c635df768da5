"""KSI's events as MCP tools: the logic behind interfaces/mcp_server.py.

    catalog.py   which tools of the daemon's `tools:list` this server offers (pure)
    results.py   a KSI reply or error as an MCP tool result, a tool as an MCP listing (pure)
    daemon.py    the one connection to the daemon, made again when the daemon comes back
    server.py    the MCP server: tools/list, tools/call, list-changed notifications
    main.py      the command line: options, logging to stderr, stdio

Not called `interfaces/mcp/`: a script in interfaces/ has that folder first on sys.path, where a
package named `mcp` would hide the MCP SDK itself.
"""

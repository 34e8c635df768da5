"""The stdio MCP server, interfaces/mcp_server.py: a socket client of the daemon.

    link.py   the one connection to the daemon, made again when the daemon comes back
    main.py   the command line: options, logging to stderr, stdio

What it serves (the catalog, results, resources, the MCP server itself) is `ksi_mcp`, shared
with the daemon's `mcp` plugin that serves the same over streamable HTTP.

Not called `interfaces/mcp/`: a script in interfaces/ has that folder first on sys.path, where a
package named `mcp` would hide the MCP SDK itself.
"""

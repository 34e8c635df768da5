"""An MCP server with one tool, for an agent's profile to list (docs/TOOLS.md, MCP tool servers).

Written with the official MCP Python SDK; the daemon runs it with `python units_server.py` and
speaks MCP with it over stdin/stdout.
"""
from mcp.server.mcpserver import MCPServer

server = MCPServer("units", log_level="WARNING")


@server.tool()
def c_to_f(celsius: float) -> float:
    """Convert degrees Celsius to degrees Fahrenheit."""
    return round(celsius * 9 / 5 + 32, 2)


if __name__ == "__main__":
    server.run("stdio")

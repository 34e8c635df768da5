"""Which tools the MCP server offers for a `tools:list` reply and its --allow / --deny options
(ksi_mcp/catalog.py, in this process: no daemon, no MCP)."""
import pytest

from ksi_mcp.catalog import Catalog, Exposure


def tool(name: str, *, source: str = "event", explicit_only: bool = False) -> dict:
    return {"name": name, "model_name": name.replace(":", "_"), "description": f"does {name}",
            "parameters": {"type": "object"}, "source": source, "idempotent": False,
            "explicit_only": explicit_only}


REPLY = {"tools": [tool("state:get"), tool("state:set"), tool("state:clear", explicit_only=True),
                   tool("system:health"), tool("system:shutdown", explicit_only=True),
                   tool("agent:inbox", explicit_only=True), tool("agent:list"),
                   tool("web_fetch", source="plugin:web"), tool("git_log", source="mcp:git")],
         "count": 9}


@pytest.mark.parametrize("allow, deny, offered", [
    ((), (), ["state_get", "state_set", "system_health", "agent_list"]),
    (("*",), (), ["state_get", "state_set", "system_health", "agent_list"]),
    (("state:*",), (), ["state_get", "state_set"]),
    (("state:*", "state:clear"), (), ["state_get", "state_set", "state_clear"]),
    (("system:shutdown",), (), ["system_shutdown"]),
    (("state:c*",), (), []),                       # a pattern never names an explicit-only tool
    ((), ("agent:*",), ["state_get", "state_set", "system_health"]),
    (("state:clear", "state:*"), ("state:clear",), ["state_get", "state_set"]),  # deny wins
])
def test_exposure_chooses_the_offered_tools(allow, deny, offered):
    catalog = Catalog.from_tools_list(REPLY, Exposure(allow, deny))
    assert catalog.model_names == offered


def test_tools_that_are_not_events_are_left_to_their_own_servers():
    names = Catalog.from_tools_list(REPLY, Exposure(("*", "web_fetch"))).model_names
    assert "web_fetch" not in names and "git_log" not in names


def test_a_tool_is_found_by_the_name_the_daemon_gave_it():
    catalog = Catalog.from_tools_list(REPLY, Exposure())
    assert catalog.find("state_get").event == "state:get"
    assert catalog.find("state:get") is None
    assert Catalog.from_tools_list(REPLY, Exposure()) == catalog
    assert Catalog.from_tools_list(REPLY, Exposure(deny=("agent:*",))) != catalog


def test_an_agent_is_offered_exactly_its_tools_and_nobody_nothing():
    from ksi_mcp.callers import NOBODY, Caller
    scout = Caller.agent("scout", ["state:get", "state:clear", "web_fetch"])
    offered = Catalog.from_tools_list(REPLY, scout.exposure, events_only=False)
    assert offered.model_names == ["state_get", "state_clear", "web_fetch"]
    assert Catalog.from_tools_list(REPLY, NOBODY.exposure, events_only=False).tools == ()
    # A socket client can only send events: a plugin's tool is not offered through it.
    assert "web_fetch" not in Catalog.from_tools_list(REPLY, scout.exposure).model_names

"""The bearer tokens the HTTP endpoint accepts, and who each one says is calling.

One token is the host's (written to the token file at every start; an MCP host such as Claude
Code sends it). The others are issued to KSI's own agents by `mcp:agent_config`, one per agent
and tool set, each naming its agent and the tools its profile allows. An agent's tokens end with
it (`mcp:forget_agent`, sent by the agent plugin at terminate) or with the daemon: a restart
issues new ones, and the files that held the old ones are removed.

Only digests are kept, and a token is looked up by its digest, so nothing here compares a
secret byte by byte. The book is the SDK's `TokenVerifier`: its `client_id` tells sessions of
different callers apart (a session opened with one token answers no other token).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from mcp.server.auth.provider import AccessToken

from ksi_mcp.callers import Caller

HOST = "host"


@dataclass(frozen=True, slots=True)
class Holder:
    client_id: str
    caller: Caller


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenBook:
    def __init__(self) -> None:
        self._holders: dict[bytes, Holder] = {}
        self._issued: dict[tuple[str | None, frozenset[str]], str] = {}

    def new_host_token(self, host: Caller) -> str:
        return self._add(HOST, host)

    def token_for_agent(self, agent_id: str | None, tools: list[str]) -> tuple[str, str]:
        """(client id, token) for an agent offered exactly `tools`; asked again for the same
        agent and tools, the same token (an agent's every turn runs a new `claude`)."""
        key = (agent_id, frozenset(tools))
        token = self._issued.get(key)
        if token is None:
            client_id = f"agent:{agent_id}:{len(self._issued) + 1}" if agent_id \
                else f"request:{len(self._issued) + 1}"
            token = self._issued[key] = self._add(client_id, Caller.agent(agent_id, tools))
        return self._holders[_digest(token)].client_id, token

    def revoke_agent(self, agent_id: str) -> list[str]:
        """Forget every token issued to `agent_id` (it was terminated); their client ids."""
        gone = [holder.client_id for holder in self._holders.values()
                if holder.caller.agent_id == agent_id]
        self._holders = {digest: holder for digest, holder in self._holders.items()
                         if holder.client_id not in gone}
        self._issued = {key: token for key, token in self._issued.items()
                        if key[0] != agent_id}
        return gone

    def holder_of(self, token: str) -> Holder | None:
        return self._holders.get(_digest(token))

    async def verify_token(self, token: str) -> AccessToken | None:
        holder = self.holder_of(token)
        if holder is None:
            return None
        return AccessToken(token=token, client_id=holder.client_id, scopes=[])

    def _add(self, client_id: str, caller: Caller) -> str:
        token = secrets.token_urlsafe(32)
        self._holders = {digest: holder for digest, holder in self._holders.items()
                         if holder.client_id != client_id}  # a new host token replaces the old
        self._holders[_digest(token)] = Holder(client_id, caller)
        return token

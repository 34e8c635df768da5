"""Cluster mode, items 3 and 4 of issue 19: agents with one home that move when it dies.

A real nats-server (the `nats_server` fixture) and real daemon processes, each with its own var
directory; short lease TTLs keep failover quick. The deterministic offline model answers.
"""
from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from cluster_nodes import CuttableProxy, shared_agent_store, start_node, wait_for
from conftest import data_of, error_of

LEASE_TTL_S = 2
FAST_LEASES = {"cluster": {"lease_ttl_s": LEASE_TTL_S},
               "plugins": {"agent": {"restart_base_delay_s": 0.1}}}
# A lease expires within its TTL; the server removes it within about a second more, and the
# other node looks for orphans every half TTL: well inside this bound, which is generous.
FAILOVER_WITHIN_S = 20.0


def spawn(node, agent_id: str, **extra) -> dict:
    return data_of(node.request("agent:spawn", {"agent_id": agent_id, "profile": "assistant",
                                                **extra}))


def send_and_wait(node, agent_id: str, content: str, timeout_s: float = 30.0) -> dict:
    with node.client(timeout=timeout_s + 15) as client:
        return client.request("agent:send", {"agent_id": agent_id, "content": content,
                                             "wait": True, "timeout_s": timeout_s})


def listed(node) -> dict:
    return {a["agent_id"]: a for a in data_of(node.request("agent:list"))["agents"]}


def resumed_on(node, agent_id: str, node_id: str) -> bool:
    """The agent runs on `node` (whose id is `node_id`): its lease there is not enough, the
    node may still be resuming it (and answers `unavailable` meanwhile)."""
    if listed(node).get(agent_id, {}).get("node") != node_id:
        return False  # (asked before, agent:info would be forwarded to the old home)
    reply = node.request("agent:info", {"agent_id": agent_id})
    return "data" in reply and reply["data"]["node"] == node_id


@pytest.fixture
def two_nodes(workdir, nats_server):
    nodes = [start_node(workdir, nats_server, name, FAST_LEASES)
             for name in ("node-a", "node-b")]
    yield nodes
    for node in nodes:
        node.stop()


def test_an_agent_on_a_answers_b_shows_in_b_list_and_b_terminates_it(two_nodes):
    a, b = two_nodes
    spawn(a, "helper")
    agents = wait_for(lambda: "helper" in listed(b) and listed(b))
    assert agents["helper"]["node"] == "node-a"
    assert listed(a)["helper"]["node"] == "node-a"
    health_a = data_of(a.request("system:health"))["cluster"]
    assert health_a["leases"] == ["helper"] and health_a["lease_ttl_s"] == LEASE_TTL_S
    assert data_of(b.request("system:health"))["cluster"]["leases"] == []
    assert wait_for(lambda: [n["node_id"] for n in data_of(b.request("system:health"))[
        "cluster"]["nodes"]] == ["node-a", "node-b"])
    reply = data_of(send_and_wait(b, "helper", "hello from b"))
    assert reply["delivered"] is True and reply["reply"]["text"]
    info = data_of(b.request("agent:info", {"agent_id": "helper"}))
    assert info["node"] == "node-a" and info["turns"] == 1
    assert [t["content"] for t in info["recent"]] == ["hello from b"]
    assert data_of(b.request("agent:terminate", {"agent_id": "helper"}))["status"] == \
        "terminated"
    wait_for(lambda: "helper" not in listed(a) and "helper" not in listed(b))
    assert error_of(b.request("agent:send", {"agent_id": "helper", "content": "x"}))[
        "code"] == "not_found"


def gated_config(api_base: str) -> dict:
    """FAST_LEASES, and the fake server's `gated` model (a call waits for the test's gate)."""
    return {**FAST_LEASES, "plugins": {
        **FAST_LEASES["plugins"],
        "completion": {"aliases": {"gated": {"model": "openai/gated", "api_base": api_base,
                                             "api_key": "sk-test"}},
                       "retry": {"max_attempts": 1}}}}


def next_push_message(client, event: str, timeout: float = 30.0) -> dict:
    """The next `event` push on `client`, whole (its correlation id too)."""
    deadline = time.monotonic() + timeout
    while True:
        client.settimeout(max(0.05, deadline - time.monotonic()))
        message = client.recv()
        if message.get("type") == "event" and message["event"] == event:
            return message
        assert time.monotonic() < deadline, f"no {event} within {timeout} s"


def next_push(client, event: str, timeout: float = 30.0) -> dict:
    return next_push_message(client, event, timeout)["data"]


def second_turn_at_the_model_on(a, b, fake_openai) -> dict:
    """Agent `mover` on node A has answered its first turn, and its second, sent from B, is
    held at the (gated) model on A: the `agent:send` acceptance."""
    fake_openai.open_gate()
    spawn(a, "mover", model="gated")
    wait_for(lambda: "mover" in listed(b))
    assert data_of(send_and_wait(b, "mover", "first"))["reply"]["turn"] == 1
    fake_openai.close_gate()
    accepted = data_of(b.request("agent:send", {"agent_id": "mover", "content": "second"}))
    assert accepted["delivered"] is True
    wait_for(lambda: fake_openai.calls_saying("second") == 1)
    return accepted


def test_kill_9_of_the_home_node_moves_the_agent_and_no_turn_is_recorded_twice(
        workdir, nats_server, fake_openai):
    config = gated_config(fake_openai.api_base)
    a, b = (start_node(workdir, nats_server, name, config) for name in ("node-a", "node-b"))
    try:
        # The second turn is at the model on node A when A dies: it was never recorded.
        accepted = second_turn_at_the_model_on(a, b, fake_openai)
        a.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        # Until the lease expires the agent runs nowhere: a clear error at once, no hang.
        error = error_of(b.request("agent:send", {"agent_id": "mover", "content": "x"}))
        assert error["code"] == "unavailable"
        with b.client(timeout=30) as watcher:
            data_of(watcher.request("system:subscribe", {"patterns": ["agent:reply"]}))
            moved = wait_for(lambda: listed(b)["mover"]["node"] == "node-b",
                             within=FAILOVER_WITHIN_S)
            assert moved and time.monotonic() - killed_at < FAILOVER_WITHIN_S
            # Node B takes the cut-off turn again (the same message, asked anew), once.
            wait_for(lambda: fake_openai.calls_saying("second") == 2)
            fake_openai.open_gate()
            reply = next_push(watcher, "agent:reply")
            assert reply["in_reply_to"] == accepted["message_id"] and reply["turn"] == 2
        third = data_of(send_and_wait(b, "mover", "third"))["reply"]
        assert third["turn"] == 3
        # The conversation moved with it (the shared stream of turns): the model on B is sent
        # the turns answered on A and on B, each once.
        assert third["text"] == "turn 3: you said 'third' after 'first' / 'second'"
        info = data_of(b.request("agent:info", {"agent_id": "mover"}))
        assert info["node"] == "node-b" and info["turns"] == 3 and info["pending"] == 0
        assert [t["content"] for t in info["recent"]] == ["first", "second", "third"]
        assert fake_openai.calls_saying("second") == 2 and fake_openai.calls_saying("first") \
            == 1  # the first turn, recorded on A, was not taken again on B
        assert data_of(b.request("system:health"))["cluster"]["leases"] == ["mover"]
        wait_for(lambda: [n["node_id"] for n in data_of(b.request("system:health"))[
            "cluster"]["nodes"]] == ["node-b"])  # A's heartbeat record expires after its TTL
    finally:
        fake_openai.open_gate()
        b.stop()


def test_a_partitioned_node_stops_its_agent_which_runs_on_the_other_and_stays_there(
        workdir, nats_server):
    proxy = CuttableProxy(nats_server.port)
    a = start_node(workdir, proxy, "node-a", FAST_LEASES)
    b = start_node(workdir, nats_server, "node-b", FAST_LEASES)
    try:
        spawn(a, "island")
        wait_for(lambda: "island" in listed(b))
        assert data_of(send_and_wait(b, "island", "before"))["reply"]["turn"] == 1
        assert data_of(a.request("agent:list"))["tasks_alive"] == 1
        proxy.cut()  # A hears nothing from NATS and NATS nothing from A, without a reset
        # A stops the agent by its own clock, before the lease can expire on the server...
        wait_for(lambda: data_of(a.request("agent:list"))["tasks_alive"] == 0,
                 within=FAILOVER_WITHIN_S)
        # ...and B resumes it once it has.
        wait_for(lambda: resumed_on(b, "island", "node-b"), within=FAILOVER_WITHIN_S)
        during = data_of(send_and_wait(b, "island", "during"))
        assert during["reply"]["turn"] == 2
        assert data_of(a.request("agent:list"))["tasks_alive"] == 0
        error_on_a = error_of(a.request("agent:send", {"agent_id": "island", "content": "x"}))
        assert error_on_a["code"] == "unavailable"
        proxy.heal()
        wait_for(lambda: data_of(a.request("system:health"))["cluster"]["jetstream"],
                 within=30)
        # Healed: A sees the agent on B, runs nothing of it, and reaches it there.
        wait_for(lambda: listed(a).get("island", {}).get("node") == "node-b")
        after = data_of(send_and_wait(a, "island", "after"))
        assert after["reply"]["turn"] == 3
        assert data_of(a.request("agent:list"))["tasks_alive"] == 0
        assert data_of(b.request("agent:list"))["tasks_alive"] == 1
        info = data_of(a.request("agent:info", {"agent_id": "island"}))
        assert info["node"] == "node-b"
        assert [t["content"] for t in info["recent"]] == ["before", "during", "after"]
    finally:
        a.stop()
        b.stop()
        proxy.close()


def test_an_agent_that_moved_reads_its_topics_on_its_new_home_only(workdir, nats_server):
    """The inbox (a consumer of the cluster's) follows the agent: after a partition moved it,
    the old home, reconnected, leaves its messages to the new one instead of taking them."""
    proxy = CuttableProxy(nats_server.port)
    a = start_node(workdir, proxy, "node-a", FAST_LEASES)
    b = start_node(workdir, nats_server, "node-b", FAST_LEASES)
    try:
        spawn(a, "listener", topics=["news"])
        wait_for(lambda: "listener" in listed(b))
        proxy.cut()
        wait_for(lambda: resumed_on(b, "listener", "node-b"), within=FAILOVER_WITHIN_S)
        wait_for(lambda: not data_of(a.request("system:health"))["cluster"]["jetstream"],
                 within=FAILOVER_WITHIN_S)  # A noticed (its pings), as in a real partition
        proxy.heal()
        wait_for(lambda: data_of(a.request("system:health"))["cluster"]["jetstream"],
                 within=30)
        wait_for(lambda: listed(a).get("listener", {}).get("node") == "node-b")
        for n in range(3):  # published on the old home, which reads the inbox no more
            data_of(a.request("message:publish", {"topic": "news", "content": f"item {n}",
                                                  "sender": "wire"}))
        handled = wait_for(lambda: (info := data_of(b.request(
            "agent:info", {"agent_id": "listener"})))["turns"] >= 3 and info, within=30)
        # Each once; a message the old home had fetched comes again, so maybe out of order.
        assert sorted(t["content"] for t in handled["recent"]) == [f"item {n}" for n in range(3)]
        assert handled["node"] == "node-b" and handled["turns"] == 3
        assert data_of(a.request("agent:list"))["tasks_alive"] == 0
    finally:
        a.stop()
        b.stop()
        proxy.close()


def test_a_node_stopped_cleanly_hands_its_agent_over(workdir, nats_server):
    a, b = (start_node(workdir, nats_server, name, FAST_LEASES) for name in ("node-a", "node-b"))
    try:
        spawn(a, "handed")
        wait_for(lambda: "handed" in listed(b))
        assert data_of(send_and_wait(b, "handed", "one"))["reply"]["turn"] == 1
        assert a.stop() == 0
        wait_for(lambda: resumed_on(b, "handed", "node-b"), within=FAILOVER_WITHIN_S)
        assert data_of(send_and_wait(b, "handed", "two"))["reply"]["turn"] == 2
        assert data_of(b.request("system:health"))["cluster"]["leases"] == ["handed"]
    finally:
        b.stop()


def test_a_node_frozen_past_its_lease_wakes_to_find_its_agent_moved(workdir, nats_server):
    a, b = (start_node(workdir, nats_server, name, FAST_LEASES) for name in ("node-a", "node-b"))
    try:
        spawn(a, "sleeper")
        wait_for(lambda: "sleeper" in listed(b))
        assert data_of(send_and_wait(b, "sleeper", "one"))["reply"]["turn"] == 1
        a.proc.send_signal(signal.SIGSTOP)  # a stall: no renewal, no fence check, nothing
        try:
            wait_for(lambda: resumed_on(b, "sleeper", "node-b"),
                     within=FAILOVER_WITHIN_S)
            assert data_of(send_and_wait(b, "sleeper", "two"))["reply"]["turn"] == 2
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # Awake, A learns it no longer holds the lease and runs nothing of the agent.
        wait_for(lambda: data_of(a.request("system:health"))["cluster"]["leases"] == [])
        wait_for(lambda: data_of(a.request("agent:list"))["tasks_alive"] == 0)  # being stopped
        assert data_of(send_and_wait(a, "sleeper", "three"))["reply"]["turn"] == 3
        info = data_of(b.request("agent:info", {"agent_id": "sleeper"}))
        assert [t["content"] for t in info["recent"]] == ["one", "two", "three"]
    finally:
        a.stop()
        b.stop()


async def test_a_checkpoint_written_elsewhere_fences_the_home_which_stops_the_agent(
        workdir, nats_server):
    a = start_node(workdir, nats_server, "node-a", FAST_LEASES)
    try:
        spawn(a, "fenced")
        assert data_of(send_and_wait(a, "fenced", "one"))["reply"]["turn"] == 1
        async with shared_agent_store(nats_server) as store:  # as a node taking it over does
            found = await store.read("fenced")
            await store.write("fenced", found.record, if_revision=found.revision)
        # A's next write names the revision it wrote last: refused, so the message is not
        # taken, and A stops the agent...
        assert error_of(send_and_wait(a, "fenced", "refused"))["code"] == "unavailable"
        # ...gives its lease up, and (the only node) resumes it from what is stored.
        answered = wait_for(lambda: "data" in (r := send_and_wait(a, "fenced", "after")) and r,
                            within=FAILOVER_WITHIN_S)
        assert answered["data"]["reply"]["turn"] == 2
        info = data_of(a.request("agent:info", {"agent_id": "fenced"}))
        assert [t["content"] for t in info["recent"]] == ["one", "after"]
    finally:
        a.stop()


def test_no_accepted_message_is_lost_over_repeated_kill_9(workdir, nats_server):
    nodes = {name: start_node(workdir, nats_server, name, FAST_LEASES)
             for name in ("node-a", "node-b")}
    try:
        spawn(nodes["node-a"], "keeper")
        home, accepted = "node-a", []
        for trial in range(3):
            other = "node-b" if home == "node-a" else "node-a"
            wait_for(lambda: listed(nodes[other]).get("keeper", {}).get("node") == home)
            for number in range(5):  # sent from the other node, not waited for
                sent = data_of(nodes[other].request("agent:send", {
                    "agent_id": "keeper", "content": f"trial {trial} message {number}"}))
                assert sent["delivered"] is True
                accepted.append(sent["message_id"])
            nodes[home].stop(signal.SIGKILL)
            wait_for(lambda: listed(nodes[other])["keeper"]["node"] == other,
                     within=FAILOVER_WITHIN_S)
            nodes[home] = start_node(workdir, nats_server, home, FAST_LEASES)
            home = other
        info = wait_for(lambda: (i := data_of(nodes[home].request(
            "agent:info", {"agent_id": "keeper"})))["pending"] == 0 and i)
        answered = [t["message_id"] for t in info["recent"]]
        assert sorted(answered) == sorted(accepted)  # each once: none lost, none twice
        assert info["turns"] == len(accepted) and info["node"] == home
    finally:
        for node in nodes.values():
            node.stop()


def test_an_orchestration_asked_on_a_runs_with_agents_on_both_nodes(two_nodes):
    a, b = two_nodes
    with a.client(timeout=60) as client:
        started = data_of(client.request("orchestration:start", {
            "mode": "debate", "topic": "tabs or spaces", "rounds": 2,
            "nodes": ["node-a", "node-b"]}))
        homes = {p["agent_id"]: p["node"] for p in started["agents"]}
        assert sorted(homes.values()) == ["node-a", "node-b"]
        turns, finished = [], None
        while finished is None:  # the pushes come to the asking client, from both agents
            push = client.recv()
            if push.get("event") == "orchestration:turn":
                turns.append(push["data"])
            elif push.get("event") == "orchestration:finished":
                finished = push["data"]
    assert finished["status"] == "finished" and finished["turns"] == 4
    assert [t["speaker"] for t in turns] == [p["agent_id"] for p in started["agents"]] * 2
    # The run's end terminated them, each on its own node, which remembers it ran it there.
    wait_for(lambda: not listed(a) and not listed(b))
    for node, name in ((a, "node-a"), (b, "node-b")):
        ended_here = data_of(node.request("agent:list", {"status": "terminated"}))["agents"]
        assert [e["agent_id"] for e in ended_here] == \
            [agent_id for agent_id, home in homes.items() if home == name]


def test_a_completion_runs_on_the_node_asked_and_its_result_reaches_that_client(two_nodes):
    a, b = two_nodes
    with b.client(timeout=30) as client:
        queued = data_of(client.request("completion:async", {"prompt": "hello there"}))
        result = next_push(client, "completion:result")
    assert result["request_id"] == queued["request_id"] and result["text"]
    assert data_of(b.request("completion:status", {"request_id": queued["request_id"]}))
    assert error_of(a.request("completion:status", {"request_id": queued["request_id"]}))[
        "code"] == "not_found"  # it ran on B only


def test_a_node_restarted_after_its_agent_moved_leaves_the_cut_off_turn_to_the_new_home(
        workdir, nats_server, fake_openai):
    """Node A's completion journal still holds the turn A was running when it was killed; the
    turn is the agent's, and the agent is B's now: B runs it, and A, restarted with the same
    var directory, does not run it again."""
    config = gated_config(fake_openai.api_base)
    a, b = (start_node(workdir, nats_server, name, config) for name in ("node-a", "node-b"))
    try:
        accepted = second_turn_at_the_model_on(a, b, fake_openai)
        a.stop(signal.SIGKILL)
        wait_for(lambda: resumed_on(b, "mover", "node-b"), within=FAILOVER_WITHIN_S)
        wait_for(lambda: fake_openai.calls_saying("second") == 2)  # taken again, on B
        fake_openai.open_gate()
        wait_for(lambda: data_of(b.request("agent:info", {"agent_id": "mover"}))["turns"] == 2)
        a.start()
        wait_for(lambda: data_of(a.request("system:health"))["cluster"]["jetstream"])
        request_id = f"mover:{accepted['message_id']}"
        # A's journal entry of that turn is ended, not run: the turn is the new home's.
        status = data_of(a.request("completion:status", {"request_id": request_id}))
        assert status["status"] == "moved" and status["resumed"] is False
        repeated = error_of(a.request("completion:request", {"request_id": request_id,
                                                             "prompt": "second"}))
        assert repeated["code"] == "conflict" and "mover" in repeated["message"]
        # Reached through A, the agent answers on B with a history holding each turn once.
        third = data_of(send_and_wait(a, "mover", "third"))["reply"]
        assert third["turn"] == 3
        assert third["text"] == "turn 3: you said 'third' after 'first' / 'second'"
        assert fake_openai.calls_saying("second") == 2
        history = data_of(a.request("conversation:history", {
            "session_id": data_of(a.request("agent:info", {"agent_id": "mover"}))[
                "session_id"]}))
        assert [m["content"] for m in history["messages"] if m["role"] == "user"] == \
            ["first", "second", "third"]
    finally:
        fake_openai.open_gate()
        a.stop()
        b.stop()


def test_a_node_restarted_before_its_agent_moved_takes_the_cut_off_turn_up_itself(
        workdir, nats_server, fake_openai):
    """The only node, killed mid-turn and restarted at once: its journal's entry of the turn
    is not run at start (the agent is not yet this node's again), and once the node resumes
    the agent, the agent's own turn runs it, under the same request_id, with no crash."""
    a = start_node(workdir, nats_server, "node-a", gated_config(fake_openai.api_base))
    try:
        fake_openai.open_gate()
        spawn(a, "homebody", model="gated")
        assert data_of(send_and_wait(a, "homebody", "first"))["reply"]["turn"] == 1
        fake_openai.close_gate()
        accepted = data_of(a.request("agent:send", {"agent_id": "homebody",
                                                    "content": "second"}))
        wait_for(lambda: fake_openai.calls_saying("second") == 1)
        a.stop(signal.SIGKILL)
        a.start()
        wait_for(lambda: resumed_on(a, "homebody", "node-a"), within=FAILOVER_WITHIN_S)
        wait_for(lambda: fake_openai.calls_saying("second") == 2)
        fake_openai.open_gate()
        info = wait_for(lambda: (i := data_of(a.request(
            "agent:info", {"agent_id": "homebody"})))["turns"] == 2 and i)
        assert info["recent"][-1]["request_id"] == f"homebody:{accepted['message_id']}"
        assert info["restarts"] == 0 and info["error"] is None
        assert fake_openai.calls_saying("second") == 2
    finally:
        fake_openai.open_gate()
        a.stop()


def retried_while_unavailable(ask, within: float = FAILOVER_WITHIN_S) -> dict:
    """`ask()` again after each `unavailable`, waiting the `retry_after_s` it carries, as a
    client following the protocol does; the first other answer."""
    deadline = time.monotonic() + within
    while True:
        reply = ask()
        error = reply.get("error")
        if error is None or error["code"] != "unavailable":
            return reply
        assert time.monotonic() < deadline, f"still unavailable after {within} s: {error}"
        time.sleep(error["details"]["retry_after_s"])


def test_a_request_while_the_agent_moves_says_where_it_goes_and_a_retry_reaches_it(
        workdir, nats_server):
    a, b = (start_node(workdir, nats_server, name, FAST_LEASES) for name in ("node-a", "node-b"))
    try:
        spawn(a, "traveller")
        wait_for(lambda: "traveller" in listed(b))
        assert data_of(send_and_wait(b, "traveller", "one"))["reply"]["turn"] == 1
        # B's agents.db is held by another process's write lock (a slow disk would do the
        # same): B takes the lease, then its resumption waits to write the agent down.
        blocker = sqlite3.connect(b.var_dir / "plugins" / "agent" / "agents.db",
                                  isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            a.stop(signal.SIGKILL)
            wait_for(lambda: data_of(b.request("system:health"))["cluster"]["leases"] ==
                     ["traveller"], within=FAILOVER_WITHIN_S)
            for event, data in (("agent:send", {"agent_id": "traveller", "content": "early"}),
                                ("agent:info", {"agent_id": "traveller"})):
                error = error_of(b.request(event, data))
                assert error["code"] == "unavailable", error
                assert "moving to node node-b" in error["message"], error
                assert error["details"]["node"] == "node-b" and error["details"]["resuming"]
                assert error["details"]["retry_after_s"] > 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        reply = retried_while_unavailable(lambda: send_and_wait(b, "traveller", "two"))
        assert data_of(reply)["reply"]["turn"] == 2
        info = data_of(b.request("agent:info", {"agent_id": "traveller"}))
        assert info["node"] == "node-b" and [t["content"] for t in info["recent"]] == \
            ["one", "two"]  # the message refused while it moved was not taken
    finally:
        a.stop()
        b.stop()


def test_a_send_without_wait_from_b_pushes_the_reply_to_the_sender_on_b_once(two_nodes):
    a, b = two_nodes
    spawn(a, "far")
    wait_for(lambda: "far" in listed(b))
    with b.client(timeout=30) as sender, b.client(timeout=30) as watcher_b, \
            a.client(timeout=30) as watcher_a:
        for watcher in (watcher_a, watcher_b):
            data_of(watcher.request("system:subscribe", {"patterns": ["agent:reply"]}))
        time.sleep(1.0)  # the bridge learns B's and A's interest (as in test_cluster_events)
        sender.send("agent:send", {"agent_id": "far", "content": "no wait"},
                    correlation_id="send-1")
        accepted = data_of(sender.recv_reply())
        assert accepted["delivered"] is True
        pushed = next_push_message(sender, "agent:reply")
        # As a single daemon pushes it: to the sending connection, with its correlation id.
        assert pushed["correlation_id"] == "send-1"
        assert pushed["data"]["agent_id"] == "far"
        assert pushed["data"]["in_reply_to"] == accepted["message_id"]
        assert pushed["data"]["turn"] == 1 and "no wait" in pushed["data"]["text"]
        # Every node's subscribers see it once: the next reply each sees is the next turn's.
        data_of(send_and_wait(b, "far", "second"))
        for watcher in (watcher_a, watcher_b):
            assert next_push(watcher, "agent:reply")["in_reply_to"] == accepted["message_id"]
            assert next_push(watcher, "agent:reply")["turn"] == 2




def test_a_request_for_an_agent_whose_home_was_silently_cut_off_answers_unavailable(
        workdir, nats_server):
    config = {"cluster": {"lease_ttl_s": 5}}  # its lease still names node-a when B asks
    proxy = CuttableProxy(nats_server.port)
    a = start_node(workdir, proxy, "node-a", config)
    b = start_node(workdir, nats_server, "node-b", config)
    try:
        spawn(a, "stranded")
        wait_for(lambda: "stranded" in listed(b))
        proxy.cut()  # NATS still holds A's subscription: nobody tells the server it is gone
        asked = time.monotonic()
        with b.client(timeout=60) as client:
            reply = client.request("agent:info", {"agent_id": "stranded"})
        took = time.monotonic() - asked
        error = error_of(reply)
        assert error["code"] == "unavailable", error
        assert "node-a" in error["message"] and "resume" in error["message"]
        assert error["details"]["node"] == "node-a"
        assert error["details"]["agent_id"] == "stranded"
        assert 0 < error["details"]["retry_after_s"] <= 5
        assert took < 15, f"answered after {took:.1f} s"  # a hang check: not 30 s
        # Once its lease is gone B resumes it, as retry_after_s suggested.
        wait_for(lambda: resumed_on(b, "stranded", "node-b"), within=FAILOVER_WITHIN_S)
    finally:
        a.stop()
        b.stop()
        proxy.close()

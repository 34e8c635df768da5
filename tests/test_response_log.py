"""The per-session response log (var/logs/responses/<session>.jsonl): each record complete when
appended, new sessions' files taken from spares made ahead in a worker thread, and no spare left
after a clean close."""
import asyncio

import orjson

from ksi_daemon.plugins.completion.response_log import SPARES, ResponseLog


async def settled(log: ResponseLog) -> None:
    for _ in range(200):  # the spares are made in a worker thread
        if not log._restocking:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the spares were never made")


async def test_each_new_session_gets_its_own_complete_file(tmp_path):
    log = ResponseLog(tmp_path / "responses")
    for n in range(SPARES * 3):
        log.append(f"session-{n}", {"n": n})
        await settled(log)
    for n in range(SPARES * 3):
        lines = (tmp_path / "responses" / f"session-{n}.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line) for line in lines] == [{"n": n}]
    assert len(list((tmp_path / "responses" / ".spare").iterdir())) == SPARES
    log.close()
    assert list((tmp_path / "responses" / ".spare").iterdir()) == []


async def test_a_close_while_spares_are_being_made_leaves_none(tmp_path):
    log = ResponseLog(tmp_path / "responses")
    log.append("first", {"n": 1})  # starts making spares
    log.close()
    await settled(log)
    assert list((tmp_path / "responses" / ".spare").iterdir()) == []
    assert (tmp_path / "responses" / "first.jsonl").read_bytes() == b'{"n":1}\n'

import asyncio, cProfile, pstats, sys, shutil, tempfile
from pathlib import Path
sys.path.insert(0, "bench")
import completion_bench as cb
import orjson, uvloop

async def main(calls):
    from state_inprocess import start_daemon_in
    server, api_base = cb.start_fake_server()
    var_dir = Path(tempfile.mkdtemp(prefix="ksi-cs-", dir="/tmp"))
    daemon = await start_daemon_in(var_dir)
    plugin = daemon.plugins.records["completion"].obj
    plugin.aliases["echo"] = {"model": "openai/echo", "api_base": api_base, "api_key": "sk-bench"}
    await daemon.plugins.ready_all(); await plugin.loader.ready()
    clock = cb.SegmentClock(); conn = cb.clocked_connection(clock)
    prof = cProfile.Profile()
    for n in range(calls + 20):
        if n == 20: prof.enable()
        cid = f"s{n}"
        conn.waiting[cid] = asyncio.get_running_loop().create_future()
        daemon.router.handle_line(orjson.dumps({"event": "completion:request", "correlation_id": cid,
            "data": {"prompt": "how long does this take?", "model": "echo"}}), conn)
        assert "data" in await conn.waiting[cid]
        await asyncio.sleep(0)
    await asyncio.sleep(0.6)
    prof.disable()
    prof.dump_stats("/tmp/probe/comp.prof")
    await daemon.plugins.stopping_all(); await daemon.plugins.shutdown_all()
    cb.stop_fake_server(server); shutil.rmtree(var_dir, ignore_errors=True)
uvloop.run(main(int(sys.argv[1])))

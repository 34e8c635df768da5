"""The KSI monitor: a Textual view of a running daemon (see docs/MONITOR.md).

    state.py  what the monitor knows (agents, events, completions, figures), no Textual
    link.py   one subscribed connection to the daemon, remade whenever the daemon comes back
    app.py    the Textual app that shows the state and takes the keys

Run it with `python interfaces/monitor_tui.py [--socket PATH]`.
"""

"""`new-plugin NAME [--dir DIR]`: write a runnable plugin and its test (scaffolding/new_plugin.py).

DIR is a plugin directory (docs/PLUGINS.md, "How plugins are found"), `~/.ksi/plugins` unless
told; the plugin is the package DIR/NAME/. The daemon loads it once DIR is in
`daemon.plugin_dirs` (or given as `--plugin-dir`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..scaffolding.new_plugin import PluginNameRefused, write_new_plugin
from .output import EXIT_FAILED, EXIT_OK, error

DEFAULT_PLUGIN_DIR = "~/.ksi/plugins"


def new_plugin(config: dict, args: argparse.Namespace) -> int:
    plugin_dir = Path(args.dir or DEFAULT_PLUGIN_DIR).expanduser()
    try:
        files = write_new_plugin(plugin_dir, args.name)
    except PluginNameRefused as exc:
        error(str(exc))
        return EXIT_FAILED
    except FileExistsError:
        error(f"{plugin_dir / args.name} exists already; not touching it (choose another name "
              "or --dir)")
        return EXIT_FAILED
    except OSError as exc:
        error(f"cannot write the plugin in {plugin_dir}: {exc}")
        return EXIT_FAILED
    for path in files:
        print(f"Wrote {path}")
    loaded = str(plugin_dir) in config["daemon"]["plugin_dirs"]
    print(f"""
Try it:   python -m pytest {plugin_dir / args.name}
Load it:  {"(" + str(plugin_dir) + " is in daemon.plugin_dirs already) " if loaded else ""}\
daemon_control.py restart, with "{plugin_dir}" in daemon.plugin_dirs of the config file
          (or: python -m ksi_daemon --foreground --plugin-dir {plugin_dir})
Ask it:   echo '{{"event": "{args.name}:hello", "data": {{"name": "Ada"}}}}' | nc -N -U {config["daemon"]["socket_path"]}""")
    return EXIT_OK

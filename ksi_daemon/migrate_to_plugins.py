#!/usr/bin/env python3
"""The deployment guide's migration tool (seeds/001, step 3), with its commands as written:

    python ksi_daemon/migrate_to_plugins.py generate --handlers-dir DIR --output-dir DIR
    python ksi_daemon/migrate_to_plugins.py migrate-state --old-state PATH --new-state DIR

`generate` turns a directory of legacy command handler modules (the input is described in
docs/OPERATIONS.md, "Scaffolding and migration"; examples/legacy_commands/ is a sample) into
plugin skeletons, one plugin module per handler module, that load and answer their events.
`migrate-state` is `daemon_control.py migrate-state` under the guide's names: PATH is an old
state database or a directory of `<namespace>.json` files; DIR receives `state.db`, the file
`plugins.state_service.state_dir: DIR` makes the daemon use (a path ending in `.db` is taken
as the database file itself).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (the guide's `python ksi_daemon/migrate_to_plugins.py`): sys.path[0] is
    # ksi_daemon/ itself, whose modules would shadow others by their bare names; the package is
    # found from its parent instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from ksi_daemon.plugins.state.migrate import DB_FILE_NAME  # noqa: E402
from ksi_daemon.plugins.state.migrate import main as migrate_state_main  # noqa: E402
from ksi_daemon.scaffolding.legacy_handlers import read_handlers_dir  # noqa: E402
from ksi_daemon.scaffolding.plugin_source import (event_name, identifier,  # noqa: E402
                                                  plugin_module_source, plugin_name)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="migrate_to_plugins.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    generate = verbs.add_parser("generate", help="plugin skeletons from legacy command handlers")
    generate.add_argument("--handlers-dir", required=True, type=Path,
                          help="the directory of legacy handler modules (*.py)")
    generate.add_argument("--output-dir", required=True, type=Path,
                          help="where the plugin modules go (a plugin directory)")
    generate.add_argument("--namespace", default="legacy", type=namespace_name,
                          help="the events' namespace (default: legacy)")
    generate.add_argument("--force", action="store_true", help="replace existing files")
    state = verbs.add_parser("migrate-state", help="import old state into a new state store")
    state.add_argument("--old-state", required=True, type=Path,
                       help="an old state database, or a directory of <namespace>.json files")
    state.add_argument("--new-state", required=True, type=Path,
                       help=f"the new state directory (receives {DB_FILE_NAME}), or a .db file")
    return parser


def namespace_name(text: str) -> str:
    if identifier(text) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace ([a-z0-9_], e.g. legacy)")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "generate":
        return generate(args.handlers_dir, args.output_dir, args.namespace, args.force)
    return migrate_state(args.old_state, args.new_state)


def generate(handlers_dir: Path, output_dir: Path, namespace: str, force: bool) -> int:
    if not handlers_dir.is_dir():
        return failed(f"--handlers-dir {handlers_dir}: no such directory")
    modules, ignored = read_handlers_dir(handlers_dir)
    for reason in ignored:
        print(f"skipped {reason}", file=sys.stderr)
    if not modules:
        return failed(f"no legacy command handlers in {handlers_dir} (classes decorated "
                      "@command_handler(\"NAME\") with a handle method; see docs/OPERATIONS.md)")
    targets = {module.path: output_dir / f"{plugin_name(namespace, module)}.py"
               for module in modules}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not force:
        return failed(f"not replacing {', '.join(existing)} (--force replaces them)")
    output_dir.mkdir(parents=True, exist_ok=True)
    for module in modules:
        targets[module.path].write_text(plugin_module_source(module, namespace), encoding="utf-8")
        for command in module.commands:
            print(f"{command.name:<24} -> {event_name(namespace, command.name):<32} "
                  f"{targets[module.path]}")
    count = sum(len(module.commands) for module in modules)
    print(f"Generated {len(modules)} plugin(s) with {count} event(s) in {output_dir}; load them "
          f"with: python -m ksi_daemon --plugin-dir {output_dir}")
    return EXIT_OK


def migrate_state(old_state: Path, new_state: Path) -> int:
    database = new_state if new_state.suffix == ".db" else new_state / DB_FILE_NAME
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return int(migrate_state_main(["--from", str(old_state), "--db", str(database)]) or 0)


def failed(message: str) -> int:
    print(f"migrate_to_plugins.py: {message}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

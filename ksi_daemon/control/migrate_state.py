"""`migrate-state`: import state from an older KSI installation into this daemon's store."""
from __future__ import annotations

import argparse
import os

from .output import EXIT_UNAVAILABLE, error


def migrate_state(config: dict, args: argparse.Namespace) -> int:
    try:
        from ..plugins.state import migrate
    except ImportError as exc:
        error("state migration is not available in this installation "
              f"(cannot import ksi_daemon.plugins.state.migrate: {exc})")
        return EXIT_UNAVAILABLE
    # The migration finds the state database under $KSI_VAR_DIR unless told --db/--var-dir:
    # give it the var directory the daemon would use, wherever that was configured.
    os.environ["KSI_VAR_DIR"] = config["daemon"]["var_dir"]
    code = migrate.main(["--from", args.source, *args.extra])
    return int(code or 0)

"""Writing plugins: from an older KSI's command handlers (`migrate_to_plugins.py generate`) or
from nothing (`daemon_control.py new-plugin`).

`legacy_handlers` reads the old handler modules without importing them; `plugin_source` writes
one plugin module per handler module; `new_plugin` writes a fresh plugin package and its test.
"""

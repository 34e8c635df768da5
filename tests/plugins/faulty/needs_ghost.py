PLUGIN_METADATA = {"name": "needs_ghost", "dependencies": ["ghost"]}

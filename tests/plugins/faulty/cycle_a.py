PLUGIN_METADATA = {"name": "cycle_a", "dependencies": ["cycle_b"]}

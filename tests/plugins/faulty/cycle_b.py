PLUGIN_METADATA = {"name": "cycle_b", "dependencies": ["cycle_a"]}

from ksi_daemon.plugin_base import BasePlugin, hookimpl
from ksi_daemon.plugin_types import PluginMetadata, PluginCapabilities

class MyPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            metadata=PluginMetadata(
                name="my_plugin",
                version="1.0.0",
                description="My custom plugin"
            ),
            capabilities=PluginCapabilities(
                event_namespaces=["/my_namespace"],
                commands=["my:command"],
                provides_services=["my_service"]
            )
        )

    @hookimpl
    def ksi_handle_event(self, event_name, data, context):
        if event_name == "my:command":
            return {"result": "processed"}

ksi_plugin = MyPlugin

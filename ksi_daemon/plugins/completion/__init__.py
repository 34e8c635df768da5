"""The completion plugin: see plugin.py for the events and docs/COMPLETION.md for the guide."""
from .plugin import CompletionPlugin

ksi_plugin = CompletionPlugin

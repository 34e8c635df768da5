"""Implements the completion plugin's hook with an argument its spec does not have.

The completion plugin's hookspecs are added before any plugin registers, so pluggy checks this
against them and this plugin (alone) fails.
"""
from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_completion_pre_call(context, prompt_of_my_dreams):
    raise AssertionError("never called")

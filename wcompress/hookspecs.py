"""Hook specifications: what a wcompress plugin may implement."""

import pluggy

hookspec = pluggy.HookspecMarker("wcompress")
hookimpl = pluggy.HookimplMarker("wcompress")


@hookspec
def register_passes(register):
    """Register compression passes: call register(pass_instance) for each one."""


@hookspec
def register_commands(cli):
    """Add click commands to the wcompress command line."""


@hookspec
def register_metrics(register):
    """Register metrics: call register(Metric(...)) for each one."""

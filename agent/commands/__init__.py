"""Subcommands of `capture-agent`, one module each."""

"""Subcommands of the modelyard CLI; each module registers one."""

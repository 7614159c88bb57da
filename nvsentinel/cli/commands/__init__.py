"""Operator commands of `nvsentinel` (the daemons' subcommands live in `nvsentinel.daemons`)."""

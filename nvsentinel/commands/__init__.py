"""CLI subcommands: each module registers its parser and a `func(args) -> int`; no logic of its own."""

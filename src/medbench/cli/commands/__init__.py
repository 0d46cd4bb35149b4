"""CLI subcommands, one module each (see medbench.cli)."""

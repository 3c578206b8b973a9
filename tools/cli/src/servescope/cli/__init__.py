"""The `servescope` command: one module per subcommand (commands/), local mode (local/)."""

"""One module per subcommand. Each defines ``register(subparsers)`` that adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code)."""

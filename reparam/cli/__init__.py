"""Command-line interface (`reparam ...`)."""

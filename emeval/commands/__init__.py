"""One module per `emeval` subcommand."""

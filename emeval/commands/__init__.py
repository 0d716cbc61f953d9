"""One module per `emeval` subcommand, each with add_parser(subparsers) and its handler.

__all__ lists them in the order `emeval --help` shows; cli.py imports each only when needed."""

__all__ = ["run", "models", "judge", "gate", "report", "leaderboard", "experiment", "train"]

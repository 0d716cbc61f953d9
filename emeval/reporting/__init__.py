"""Turning finished runs into products: gate verdicts, comparison reports, leaderboards."""

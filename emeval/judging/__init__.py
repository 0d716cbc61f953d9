"""Judges turn (question, answer, rubric) into 0-100 scores or a recorded non-score outcome."""

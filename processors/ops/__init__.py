"""Operator tools over a running workflow's topics: the review queue, reports, summaries, corrections, produce and outcomes."""

"""Partition-local state stores: what a stateful stage remembers, on disk, backed by a changelog topic."""

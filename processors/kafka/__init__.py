"""Kafka plumbing: client settings, topics as code (derived from a workflow), confirmed writes, reads and lag. Imports avro and the bottom layer."""

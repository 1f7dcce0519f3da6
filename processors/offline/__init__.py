"""Stages without Kafka: the offline runner, evals, the promotion gate and replay after a fix."""

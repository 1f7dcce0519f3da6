"""The domain: a workflow declaration, its prompt specs, business rules, answer and verdict checks. No Kafka clients of its own."""

"""The engine: one consumer loop per stage, with its key scheduling, partition bookkeeping, commit protocol, dead letters and state tables. Stages never touch a client."""

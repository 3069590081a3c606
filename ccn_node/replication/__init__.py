"""Commands, the deterministic state machine and the command logs (local and Raft)."""

"""Tamper-evident ledger: RFC 6962 Merkle log, signed checkpoints, blocks, federation witness."""

"""Data: reading and validating SFT JSONL, batching it, and the embedded sample GenRM data."""

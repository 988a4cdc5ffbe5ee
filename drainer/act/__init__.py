"""act layer."""

"""Knowledge-graph completion (placeholder while being written)."""

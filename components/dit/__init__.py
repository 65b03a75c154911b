"""dit component."""

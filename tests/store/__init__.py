"""Unit tests of entity_vectors.store."""

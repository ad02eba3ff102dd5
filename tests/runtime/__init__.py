"""Unit tests of entity_vectors.runtime."""

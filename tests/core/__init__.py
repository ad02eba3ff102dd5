"""Unit tests of entity_vectors.core."""

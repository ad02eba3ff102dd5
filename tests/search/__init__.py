"""Unit tests of entity_vectors.search."""

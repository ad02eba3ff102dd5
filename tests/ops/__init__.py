"""Unit tests of entity_vectors.ops."""

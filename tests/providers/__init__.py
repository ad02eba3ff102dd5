"""Unit tests of entity_vectors.providers."""

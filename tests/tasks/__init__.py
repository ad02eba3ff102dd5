"""Unit tests of entity_vectors.tasks."""

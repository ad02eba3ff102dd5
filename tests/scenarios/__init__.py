"""Scenarios across the layers: host writes, the first hour, bad inputs and faults as tables."""

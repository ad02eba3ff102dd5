"""Capture: what changed in the host's tables (triggers, signals, the change log) and the fast lane's sending half."""

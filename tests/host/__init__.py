"""Tests of the host project (app/): its views."""

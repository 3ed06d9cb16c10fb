"""The fault-injection ("chaos") suite: crashes, outages, corruption, bad input and secrets.

A package (unlike tests/), so that its conftest does not shadow tests/conftest.py.
See docs/reliability.md and scripts/chaos.
"""

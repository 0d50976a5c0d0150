"""Fault drills: scripts that start a platform of their own and break it on purpose (README, Drills)."""

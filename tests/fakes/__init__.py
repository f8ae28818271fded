"""Fakes of the outside world for tests: real servers on loopback that answer from a script."""

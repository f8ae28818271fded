"""Engines that do the work of an agent step."""

#: Tests set this to False so that no test can reach a real model by accident.
ALLOW_NETWORK_ENGINES = True

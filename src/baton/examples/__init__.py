"""Flows that run offline out of the box (engine `offline`)."""

from baton.examples.repo_review import repo_review

__all__ = ["repo_review"]

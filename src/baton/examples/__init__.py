"""Flows that run offline out of the box (engine `offline`)."""

from baton.examples.draft_critique import draft_critique as draft_critique
from baton.examples.handoff import handoff as handoff
from baton.examples.post_variants import post_variants as post_variants
from baton.examples.repo_review import repo_review

__all__ = ["repo_review"]

"""Declaring flows and deciding what a flow adds next (pure)."""

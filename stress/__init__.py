"""Bounded stress and soak runs of tokenflight against loopback servers."""

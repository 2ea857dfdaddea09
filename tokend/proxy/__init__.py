"""The proxy and the SDDC Manager facade (SPEC §9)."""

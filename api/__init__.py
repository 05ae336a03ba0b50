"""Thin non-custodial HTTP service over chain_client and the event index."""

"""Warehouse device signers, the reading gateway and the m-of-n attestation relayer."""

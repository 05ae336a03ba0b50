"""Everything that talks to a chain node: artifacts, deployment, typed contract clients, event index."""

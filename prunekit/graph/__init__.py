"""prunekit.graph"""

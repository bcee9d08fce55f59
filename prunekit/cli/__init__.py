"""prunekit.cli"""

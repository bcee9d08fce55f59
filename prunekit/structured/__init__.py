"""prunekit.structured"""

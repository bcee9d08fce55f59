"""prunekit.reduce"""

"""prunekit.search"""

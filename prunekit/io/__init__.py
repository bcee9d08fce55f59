"""prunekit.io"""

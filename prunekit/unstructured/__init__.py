"""prunekit.unstructured"""

"""prunekit.recipe"""

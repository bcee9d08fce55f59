"""prunekit.schedule"""

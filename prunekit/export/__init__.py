"""prunekit.export"""

"""prunekit.report"""

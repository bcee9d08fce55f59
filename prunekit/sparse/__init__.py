"""Sparse kernels that make unstructured pruning faster on CPU (issue 11).

Dense kernels gain nothing from zeros. :func:`sparsify` times, per ``nn.Linear``, the dense layer against
CSR (torch/MKL), BSR (torch) and scipy.sparse kernels on the layer's real input at a given batch size and
puts a :class:`SparseLinear` only where a sparse kernel measures faster (``min_speedup``); the returned
table says, layer by layer, where dense wins. ``prunekit.save`` / ``prunekit.load`` keep the decisions
(:func:`sparse_record` / :func:`restore_sparse`); :func:`densify` undoes them (e.g. before ONNX export).
scipy is imported only when a scipy kernel is built.
"""
from .linear import FORMATS, SparseLinear
from .record import densify, restore_sparse, sparse_record
from .sparsify import DEFAULTS, OPTIONS, SparsifyTable, sparsify
from .timing import interleaved_median

__all__ = ["sparsify", "SparseLinear", "SparsifyTable", "FORMATS", "DEFAULTS", "OPTIONS", "sparse_record",
           "restore_sparse", "densify", "interleaved_median"]

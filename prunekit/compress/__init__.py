"""Deep Compression (Han et al. 2016): pruning + weight sharing + entropy coding, and its file format.

* :func:`share_weights` clusters each layer's kept weights (1-D k-means, linear init) into
  ``2**bits`` centroids; :func:`finetune_centroids` trains the centroids with pooled gradients.
* :func:`encode_deep` / :func:`decode_deep` write and read the Deep-Compression file (magic +
  JSON header + sha256-checked blobs; positions as bitmap or relative gaps, streams coded with
  canonical Huffman or zlib / lzma / bz2, whichever is smallest). ``prunekit.save(model, path,
  codec="deep", bits=...)`` writes it and ``prunekit.load`` reads it.
* :func:`deep_compression_sizes` gives the size waterfall dense -> pruned -> shared -> coded.
* :func:`fold_batchnorm_statistics` folds BatchNorm running statistics into the affine weight and
  bias (eval outputs unchanged up to rounding): two of a BatchNorm's four vectors become constants.
"""
from .batchnorm import fold_batchnorm_statistics
from .deep_read import decode_deep, read_deep
from .file import MAGIC, deep_compression_sizes, encode_deep, is_deep_file
from .finetune import finetune_centroids, shared_layers
from .kmeans import kmeans_1d, linear_init
from .sharing import DEFAULT_BITS, SharedLayer, resolve_bits, share_weights

__all__ = ["share_weights", "finetune_centroids", "shared_layers", "SharedLayer", "resolve_bits", "DEFAULT_BITS",
           "kmeans_1d", "linear_init", "encode_deep", "decode_deep", "read_deep", "is_deep_file", "MAGIC",
           "deep_compression_sizes", "fold_batchnorm_statistics"]

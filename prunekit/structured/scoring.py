"""Channel-score aggregation lives in :mod:`prunekit.importance.aggregate`; structured/ uses it from there."""
from ..importance.aggregate import (NORMALIZERS, REDUCTIONS, SliceFn, aggregate, combine, iter_member_scores,  # noqa: F401
                                    member_slices, norm_along, normalise, to_atoms)

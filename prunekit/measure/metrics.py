"""Classification quality: accuracy, macro recall (the seeds' "coverage"), macro false-positive rate, via scikit-learn."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """Accuracy, macro recall and macro false-positive rate of integer predictions.

    FPR of class c = FP_c / (FP_c + TN_c), one-vs-rest, averaged over classes.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score  # heavy: only when measured

    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    labels = np.arange(num_classes)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    denom = fp + tn
    fpr = np.divide(fp, denom, out=np.zeros_like(fp, dtype=float), where=denom > 0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "recall_macro": float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "fpr_macro": float(fpr.mean()),
    }

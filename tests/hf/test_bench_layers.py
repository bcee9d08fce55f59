"""benchmarks/bench_transformers.py with whole layers removed: each student layer is refitted and distilled
against the teacher layer it came from (``layer_map``), not the teacher layer at its new index."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # bench_transformers imports its siblings
    try:
        spec = importlib.util.spec_from_file_location("bench_transformers_layers", BENCHMARKS / "bench_transformers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def tiny_embedder(bench):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    embedder = sys.modules["bench_transformer"].SentenceEmbedder  # imported by bench_transformers
    return embedder(transformers.BertModel(cfg, add_pooling_layer=False)).eval()


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 64, (8, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 7:] = torch.randint(0, 2, (8, 3), generator=g)
        out.append((ids, mask))
    return out


def mapped_hidden_error(bench, student, teacher, data):
    """Mean relative error of each student layer's output against the teacher layer it stands for."""
    total = 0.0
    for ids, mask in data:
        with torch.no_grad():
            s = bench.hidden_and_embedding(student, ids, mask)[0][1:]
            t = bench.hidden_and_embedding(teacher, ids, mask)[0]
        m = mask.bool()
        for h, j in zip(s, student.layer_map):
            total += float((h[m] - t[j + 1][m]).norm() / t[j + 1][m].norm())
    return total


def test_remove_layers_records_which_teacher_layers_stay(bench):
    teacher = tiny_embedder(bench)
    data = batches()
    small = bench.remove_layers(teacher, data[0], data, keep=2)
    assert len(small.bert.encoder.layer) == 2 and small.bert.config.num_hidden_layers == 2
    for layer, j in zip(small.bert.encoder.layer, small.layer_map):  # the kept layers are the teacher's, unchanged
        assert torch.equal(layer.output.dense.weight, teacher.bert.encoder.layer[j].output.dense.weight)
    assert bench.layer_map(small, teacher) == small.layer_map
    with pytest.raises(ValueError, match="layer_map"):
        del small.layer_map
        bench.layer_map(small, teacher)


def test_refit_matches_the_mapped_teacher_layers(bench):
    teacher = tiny_embedder(bench)
    data = batches(seed=1)
    small = bench.remove_layers(teacher, data[0], data, keep=2)
    before = mapped_hidden_error(bench, small, teacher, data)
    bench.refit_outputs(small, teacher, data, inputs=True)
    after = mapped_hidden_error(bench, small, teacher, data)
    assert after < 0.7 * before, (before, after)

"""benchmarks/bench_transformer.py's text helpers: the distillation passages never carry a held-out sentence."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # bench_transformer imports its sibling timing.py
    try:
        spec = importlib.util.spec_from_file_location("bench_transformer_text", BENCHMARKS / "bench_transformer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


SHORT = "A short fortune entry that fits on a single line of text."
HELD = "Never trust a computer you cannot throw out of a window."
LONG = ("The first sentence of a long entry is plain enough to keep. Tiny. Another one follows it here.\n"
        "A second line goes on and on with many words.\nA third line keeps going.\nAnd a fourth line ends it.")


def write(folder: Path, entries) -> None:
    (folder / "sample").write_text("\n%\n".join(entries) + "\n")
    (folder / "sample.dat").write_bytes(b"\0")  # index files (suffix) are skipped


def test_passages_split_long_entries_and_skip_short_ones(bench, tmp_path):
    write(tmp_path, [SHORT, LONG])
    got = bench.fortune_passages([], folder=tmp_path)
    # the short entry is fortune_sentences' own; the long one is cut at sentence ends, "Tiny." joined to the next
    assert got == ["The first sentence of a long entry is plain enough to keep.",
                   "Tiny. Another one follows it here. A second line goes on and on with many words.",
                   "A third line keeps going. And a fourth line ends it."]
    assert bench.fortune_sentences(tmp_path) == [SHORT]


def test_passages_drop_any_held_out_sentence(bench, tmp_path):
    long_with_held = "\n".join(["Some introduction comes first, before the quotation.", HELD, "Then more text.",
                                "And an ending line."])
    write(tmp_path, [long_with_held, HELD.upper() + " And then a longer tail of words that goes on. " * 4])
    got = bench.fortune_passages([HELD], folder=tmp_path)
    assert got and not any(HELD.lower() in p.lower() or p.lower() in HELD.lower() for p in got)
    assert "Some introduction comes first, before the quotation." in got
    assert all(40 <= len(p) <= 200 for p in got)


def test_passages_cut_overlong_sentences_at_word_boundaries(bench, tmp_path):
    vocab = ["lorem", "ipsum", "dolor", "sit", "amet"]
    words = " ".join(vocab[i % 5] for i in range(70))  # one 377-character sentence without a full stop
    write(tmp_path, [words])
    got = bench.fortune_passages([], folder=tmp_path)
    assert len(got) == 2 and " ".join(got) == words  # nothing lost, in order
    assert all(len(p) <= 200 and set(p.split()) <= set(vocab) for p in got)  # no word cut in two

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import text


@pytest.fixture()
def vocab_file(tmp_path):
    words = text.build_vocabulary([["a", "bird", "with", "red", "wings"], ["a", "fish", "bird"]])
    path = tmp_path / "vocab.txt"
    text.write_vocabulary(words, str(path))
    return str(path)


def words(captions):
    return [[w.decode() for w in row] for row in text.split_words(captions).to_list()]


def test_split_words_normalises_lowercases_and_keeps_word_runs():
    assert words(["This bird, has RED wings!", "  the ﬁsh's fin  ", "Ｂｉｒｄ_2 naïve", "", "...!"]) == [
        ["this", "bird", "has", "red", "wings"],
        ["the", "fish", "s", "fin"],  # NFKC: the "fi" ligature; apostrophe splits, as \w+ does
        ["bird_2", "naïve"],  # full-width letters fold to ASCII; underscores and digits stay
        [],
        [],
    ]


def test_vocabulary_is_deterministic_and_reserves_end_and_unknown():
    a = text.build_vocabulary([["b", "a", "c", "a"], ["c", "a"]])
    b = text.build_vocabulary([["a", "c"], ["a", "a", "b", "c"]])  # same counts, other order
    assert a == b == ["<end>", "<unk>", "a", "c", "b"]
    assert text.build_vocabulary([["a", "b", "a"]], min_count=2) == ["<end>", "<unk>", "a"]


def test_read_vocabulary_rejects_other_files(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=str(p)):
        text.read_vocabulary(str(p))


def test_tokenizer_drops_unknown_words_like_the_original(vocab_file):
    tok = text.Tokenizer(vocab_file)
    vocab = text.read_vocabulary(vocab_file)
    ids = tok(["A bird with BLUE wings.", "zzz"]).to_list()
    assert ids == [[vocab.index(w) for w in ["a", "bird", "with", "wings"]], []]
    keep = text.Tokenizer(vocab_file, drop_unknown=False)
    assert keep(["blue bird"]).to_list() == [[text.UNK_ID, vocab.index("bird")]]
    assert tok.decode(ids[0] + [0, 5]) == "a bird with wings"


def test_eager_and_graph_tokenization_give_identical_ids(vocab_file):
    tok = text.Tokenizer(vocab_file)
    captions = tf.constant(["A bird with red wings", "ＲＥＤ fish, a bird!", "", "unknown words only",
                            "a " * 40])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def graph(c):
        return tok(c)

    eager = tok(captions)
    traced = graph(captions)
    assert eager.to_list() == traced.to_list()
    assert eager.dtype == traced.dtype == tf.int64


def test_fit_caption_pads_and_cuts():
    ids, n = text.fit_caption(tf.constant([5, 6, 7], tf.int64), 5)
    assert ids.numpy().tolist() == [5, 6, 7, 0, 0] and int(n) == 3
    ids, n = text.fit_caption(tf.range(2, 12, dtype=tf.int64), 4)  # inference: the first words
    assert ids.numpy().tolist() == [2, 3, 4, 5] and int(n) == 4
    ids, n = text.fit_caption(tf.constant([], tf.int64), 3)
    assert ids.numpy().tolist() == [0, 0, 0] and int(n) == 0


def test_training_cut_keeps_a_random_in_order_subset():
    caption = tf.range(1, 21, dtype=tf.int64)  # 20 distinct words
    seen = set()
    for s in range(20):
        ids, n = text.fit_caption(caption, 8, seed=tf.constant([s, 7]))
        kept = ids.numpy().tolist()
        assert int(n) == 8 and len(set(kept)) == 8
        assert kept == sorted(kept)  # in the caption's order
        seen.add(tuple(kept))
        again, _ = text.fit_caption(caption, 8, seed=tf.constant([s, 7]))
        assert again.numpy().tolist() == kept  # same seed, same subset
    assert len(seen) > 15  # different seeds, different subsets
    # Short captions are never reordered or dropped, whatever the seed.
    ids, n = text.fit_caption(tf.constant([4, 3, 9], tf.int64), 8, seed=tf.constant([1, 2]))
    assert ids.numpy().tolist() == [4, 3, 9, 0, 0, 0, 0, 0]
    np.testing.assert_equal(int(n), 3)

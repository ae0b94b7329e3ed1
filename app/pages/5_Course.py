"""The companion lessons: tokens, sampling, embeddings, a small GPT, diffusion, RAG, an agent, DPO."""

import numpy as np
import pandas as pd
import streamlit as st

from seg2sat.course import deps, diffusion, embeddings, gpt, sampling
from seg2sat.errors import Seg2SatError

st.set_page_config(page_title="Seg2Sat - Course", layout="wide")
st.title("How generative AI works, with real offline models")
tab_tok, tab_samp, tab_llm, tab_emb, tab_words, tab_gpt, tab_diff, tab_rag, tab_agent, tab_dpo = st.tabs(
    ["Tokens", "Sampling", "Chat (small LLM)", "Embeddings", "Secret word", "Small GPT", "Diffusion",
     "RAG", "Agent", "Preference tuning"])

with tab_tok:
    text = st.text_area("Text", "La forêt borde la rivière, et le village se trouve au-delà des champs.", key="tok_text")
    try:
        from seg2sat.course import tokens

        for name in tokens.ENCODINGS:
            t = tokens.split_tiktoken(text, name)
            st.markdown(f"**{name}**: {t.count} tokens for {len(text)} characters")
            st.code(" | ".join(t.pieces))
            st.caption(f"ids: {t.ids}")
        st.table(pd.DataFrame(tokens.compare_languages()).drop(columns=["characters"]))
        try:
            from seg2sat.course import llm

            sm = tokens.split_hf(text, llm.load_tokenizer(), "smollm2")
            st.markdown(f"**SmolLM2** (the small LLM of the Chat tab): {sm.count} tokens")
            st.code(" | ".join(sm.pieces))
        except deps.CourseDependencyError as exc:
            st.caption(str(exc))
        clip = tokens.clip_tokenizer()
        c = tokens.split_hf(text, clip, "clip")
        st.markdown(f"**CLIP** (Stable Diffusion's text encoder): {c.count} tokens, at most 75 + start/end")
        st.code(" | ".join(c.pieces))
        st.session_state["tok_clip_count"] = c.count
    except deps.CourseDependencyError as exc:
        st.warning(str(exc))

with tab_samp:
    t = st.slider("Temperature", 0.0, 3.0, 1.0, 0.1, key="samp_t")
    k = st.slider("Top-k (0: off)", 0, len(sampling.TOY_WORDS), 0, key="samp_k")
    p = st.slider("Top-p", 0.05, 1.0, 1.0, 0.05, key="samp_p")
    probs, drawn = sampling.toy_example(temperature=t, top_k=k, top_p=p, n=8)
    st.bar_chart(pd.DataFrame({"probability": probs.numpy()}, index=list(sampling.TOY_WORDS)))
    st.write("8 draws: " + ", ".join(drawn))
    st.session_state["samp_probs"] = probs.numpy()

with tab_llm:
    system = st.text_area("System instruction", "You are a geographer who describes landscapes in one sentence.",
                          key="llm_system")
    user = st.text_input("Your message", "Describe a village between vineyards and a river.", key="llm_user")
    lt = st.slider("Temperature ", 0.0, 2.0, 0.7, 0.1, key="llm_t")
    lp = st.slider("Top-p ", 0.05, 1.0, 0.9, 0.05, key="llm_p")
    if st.button("Send", key="llm_go"):
        try:
            from seg2sat.course import llm

            history = st.session_state.setdefault("llm_history", [])
            msgs = llm.messages(system, history, user)
            ctx = llm.chat_context(msgs)
            st.caption(f"What the model receives ({ctx['count']} tokens):")
            st.code(ctx["text"])
            table = llm.next_token_table(msgs, [{"temperature": lt, "top_p": lp}], top=8)
            st.table(pd.DataFrame(table))
            answer = llm.reply(msgs, temperature=lt, top_p=lp)
            history.append((user, answer))
            st.session_state["llm_context_tokens"] = ctx["count"]
        except Seg2SatError as exc:
            st.warning(str(exc))
    for u, a in st.session_state.get("llm_history", []):
        st.chat_message("user").write(u)
        st.chat_message("assistant").write(a)

with tab_emb:
    query = st.text_input("Query", "pine forest and a lake", key="emb_query")
    captions = st.text_area("Texts (one per line)", "\n".join(embeddings.EXAMPLE_TEXTS), key="emb_texts").splitlines()
    if st.button("Search", key="emb_go"):
        try:
            texts = [c for c in captions if c.strip()]
            vectors = embeddings.embed([query, *texts])
            hits = embeddings.search(query, texts, k=5, vectors=vectors[1:])
            st.table(pd.DataFrame([{"text": h.text, "cosine": round(h.score, 3)} for h in hits]))
            xy = embeddings.project_2d(vectors)
            st.scatter_chart(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "text": ["(query)", *texts]}),
                             x="x", y="y", color="text")
            st.session_state["emb_hits"] = [h.text for h in hits]
        except Seg2SatError as exc:
            st.warning(str(exc))

with tab_words:
    st.caption("Find the secret French landscape word: each guess gets a temperature (100 x cosine similarity).")
    guess = st.text_input("Your guess (in French)", key="word_guess")
    if st.button("Guess", key="word_go") and guess:
        try:
            from seg2sat.course import words

            game = st.session_state.setdefault("word_game", words.SecretWordGame(seed=int(st.session_state.get(
                "word_seed", 0))))
            result = game.guess(guess)
            if not result["known"]:
                st.warning(f"« {result['word']} » is not in the vocabulary.")
            elif result["found"]:
                st.success(f"Found: « {game.secret} »!")
            st.table(pd.DataFrame(game.ranking()))
        except Seg2SatError as exc:
            st.warning(str(exc))

with tab_gpt:
    steps = st.slider("Training steps", 20, 1000, 200, 20, key="gpt_steps")
    own = st.file_uploader("Your own text (.txt, up to 2 MB; default: Shakespeare's Sonnets)", type=["txt"],
                           key="gpt_text")
    corpus = None
    if own is not None:
        if own.size > 2 * 2**20:
            st.error(f"{own.name}: over the 2 MB limit")
        else:
            corpus = own.getvalue().decode("utf-8", errors="replace")
    if st.button("Train the small GPT", key="gpt_go"):
        bar = st.progress(0.0)
        _, _, log = gpt.train_gpt(corpus, steps=steps, eval_every=max(10, steps // 10),
                                  progress=lambda s, v: bar.progress(s / steps, text=f"step {s}: val loss {v:.2f}"))
        st.line_chart(pd.DataFrame({"train": log.train_loss, "validation": log.val_loss}, index=log.steps))
        st.caption(f"uniform guessing: ln(vocab) = {log.uniform_loss:.2f}; {log.seconds:.1f} s")
        st.code(log.samples[-1][1])
        st.session_state["gpt_val"] = log.val_loss

with tab_diff:
    sched, ts = diffusion.noise_schedule(), diffusion.TIMESTEPS  # Stable Diffusion's noise schedule
    levels = diffusion.signal_level(sched, ts)
    st.line_chart(pd.DataFrame({"signal left": levels}, index=ts))
    frames = diffusion.forward_noising(sched, diffusion.example_tile(), ts)
    st.image(np.concatenate(frames, axis=1), caption="forward noising at t = " + ", ".join(map(str, ts)))
    st.session_state["diff_levels"] = levels
    if st.button("Show the model denoising a village map", key="diff_go"):
        from seg2sat.serving import app_support as sup
        from seg2sat.serving import app_ui as ui

        loaded = ui.require_model()
        if loaded is not None:
            hint = sup.codes_to_hint(sup.template_codes("village", loaded.tile))
            frames = diffusion.denoising_trajectory(loaded.pipe, hint, "Aerial view of a village", steps=10, every=3)
            st.image(np.concatenate([hint] + [f for _, f in frames], axis=1),
                     caption="hint, then the decoded latent after steps " + ", ".join(str(s) for s, _ in frames))
            st.session_state["diff_frames"] = len(frames)

with tab_rag:
    st.caption("SmolLM2 answers from passages of this project's docs, retrieved with all-MiniLM-L6-v2; "
               "compare the same question without them.")
    question = st.text_input("Question about Seg2Sat", "How many classes does the FLAIR legend have?", key="rag_q")
    rag_k = st.slider("Passages in the prompt", 1, 4, 2, key="rag_k")
    if st.button("Answer", key="rag_go"):
        try:
            from seg2sat.course import rag

            retriever = rag.Retriever(rag.load_passages())
            with_ctx = rag.answer(question, retriever, k=rag_k)
            without = rag.answer(question, None)
            st.markdown(f"**With retrieval** ({with_ctx['context_tokens']} tokens of context): {with_ctx['answer']}")
            st.markdown(f"**Without**: {without['answer']}")
            st.table(pd.DataFrame([{"passage": p, "cosine": round(s, 3)} for p, s in with_ctx["passages"]]))
            st.session_state["rag_result"] = with_ctx
        except Seg2SatError as exc:
            st.warning(str(exc))

with tab_agent:
    st.caption("Plan -> act -> observe: the policy writes `Action: tool(argument)` or `Answer: ...`; the tools are "
               "the legend, a tile's class shares and tile search over the labelled demo scenes.")
    task = st.text_input("Task", "What colour is water in the legend?", key="agent_task")
    policy_name = st.radio("Policy", ["SmolLM2 (constrained decoding)", "SmolLM2 (free text)", "Keyword rules (no model)"],
                           key="agent_policy")
    max_steps = st.slider("Step limit", 1, 6, 3, key="agent_steps")
    if st.button("Run the agent", key="agent_go"):
        try:
            from seg2sat.course import agent

            policy = {"SmolLM2 (constrained decoding)": agent.constrained_smollm_policy,
                      "SmolLM2 (free text)": agent.smollm_policy}.get(policy_name, lambda: agent.keyword_policy)()
            run = agent.run_agent(task, st.cache_resource(agent.default_tools)(), policy, max_steps)
            for i, step_ in enumerate(run.steps, 1):
                st.markdown(f"**{i}.** `{step_.output.strip()[:200]}`")
                if step_.observation:
                    st.caption(f"Observation: {step_.observation}")
            if run.finished:
                st.success(f"Answer: {run.answer}")
            else:
                st.warning(f"No answer within {max_steps} steps.")
            st.session_state["agent_run"] = run
        except Seg2SatError as exc:
            st.warning(str(exc))

with tab_dpo:
    st.caption("DPO on the small GPT: answers that cite the legend (code and colour) are preferred to vague ones; "
               "the margin log p(chosen) - log p(rejected) is measured on classes held out of training.")
    dpo_steps = st.slider("DPO steps", 10, 100, 40, 10, key="dpo_steps")
    warm = st.slider("Warm-up steps (the reference model)", 20, 300, 60, 20, key="dpo_warm")
    if st.button("Train with DPO", key="dpo_go"):
        from seg2sat.course import preference

        train, heldout = preference.load_pairs()
        bar = st.progress(0.0)
        _, _, dlog = preference.train_dpo(train, heldout, warmup_steps=warm, steps=dpo_steps, eval_every=10,
                                          progress=lambda s_, m: bar.progress(s_ / dpo_steps, text=f"margin {m:.1f}"))
        st.line_chart(pd.DataFrame({"held-out margin": dlog.heldout_margin, "training margin": dlog.train_margin},
                                   index=dlog.steps))
        st.caption(f"{len(train)} training pairs, {len(heldout)} held-out pairs; {dlog.seconds:.1f} s")
        st.session_state["dpo_margins"] = dlog.heldout_margin

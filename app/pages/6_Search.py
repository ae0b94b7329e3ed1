"""Search tiles by a sentence (French or English) or by example; compute lives in seg2sat.search."""

from pathlib import Path

import streamlit as st

from seg2sat.errors import Seg2SatError
from seg2sat.search.index import Hit, TileIndex, index_prepared
from seg2sat.search.scenes import scenes_index
from seg2sat.serving import app_support as sup

st.set_page_config(page_title="Seg2Sat - Search", layout="wide")
st.title("Find tiles by a sentence or by example")
st.caption("Each tile's map is described (which classes, where, what surrounds what, what crosses it); the "
           "description and your sentence are embedded with a multilingual sentence model (French or English).")


@st.cache_resource(show_spinner="Indexing the labelled demo scenes...")
def demo_index() -> tuple[TileIndex, dict]:
    """The labelled scenes of the search benchmark (maps only), indexed once per server."""
    return scenes_index()[:2]


@st.cache_resource(show_spinner="Indexing the dataset (once; cached in its cache/ folder)...")
def dataset_index(path: str, by_example: bool) -> TileIndex:
    """A prepared dataset's index, from its cache or built now."""
    return index_prepared(path, by_example=by_example)[0]


def show(hits: list[Hit], maps: dict | None, root: Path | None) -> None:
    """One row per hit: image and map when there is a dataset, the map alone for demo scenes."""
    for h in hits:
        cols = st.columns([1, 1, 3])
        pictures = sup.hit_pictures(h.record, None if maps is None else maps[h.id], root)
        if "image" in pictures:
            cols[0].image(pictures["image"], caption="image")
        cols[1].image(pictures["map"], caption="map", width="content" if "image" in pictures else 128)
        cols[2].markdown(f"**{h.rank}. {h.id}** · score {h.score:.3f}")
        cols[2].caption(h.description)


default_dir = str(sup.app_config().paths.prepared_dir)
source = st.radio("Tiles", ["Labelled demo scenes", "A prepared dataset"], horizontal=True, key="search_source")
k = st.slider("Results", 1, 20, 5, key="search_k")
try:
    if source == "Labelled demo scenes":
        index, maps, root = *demo_index(), None
    else:
        folder = st.text_input("Prepared dataset folder (holds manifest.jsonl)", default_dir, key="search_dir")
        by_example = st.checkbox("Also index the images for search by example (trains the dataset's judge once)",
                                 False, key="search_images")
        index, maps, root = dataset_index(folder, by_example), None, Path(folder)
    st.caption(f"{len(index)} tiles indexed with {index.encoder}")
    query = st.text_input("Describe what you look for", "clairière entourée de forêt", key="search_query")
    if st.button("Search", key="search_go"):
        hits = index.search_text(query, k)
        st.session_state["search_hits"] = [h.id for h in hits]
        show(hits, maps, root)
    if index.image_vectors is not None:
        example = st.selectbox("Or find tiles that look like", index.ids, key="search_example")
        if st.button("Find similar tiles", key="search_similar"):
            hits = index.search_example(example, k)
            st.session_state["search_similar_hits"] = [h.id for h in hits]
            show(hits, maps, root)
except Seg2SatError as exc:
    st.warning(str(exc))

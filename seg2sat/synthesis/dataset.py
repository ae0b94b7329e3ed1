"""The finished synthetic dataset: FLAIR's metadata JSON, our manifest and the report.

- `flair-1_metadata_aerial.json`: keyed `IMG_<id>` like FLAIR-1's, with domain, zone, date and
  the patch centroid, plus what a synthetic tile is (`bands` it holds, `synthetic`, source,
  edits, score, seed, prompt, model, style, season; with trust on, `ignore_code` and
  `ignored_pixels`), so `seg2sat prepare` and other FLAIR-1 readers take the tree as they take FLAIR;
- `synthesis.jsonl`: one record per planned tile, accepted or dropped, in plan order;
- `report.json`: class shares and tile counts of the sources' maps against what was made, each
  target and how far it got, scores, drops, the diversity measure, how many distinct maps were
  rendered and how often each (`maps`), and the ignored pixels (`trust`);
- `collection.json`: the STAC Collection of the pairs' Items (written beside each image).
All four are rebuilt from the tiles' records, so a resumed run writes them whole again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from seg2sat.atomic import sweep_tmp, write_json, write_text
from seg2sat.data.flair import METADATA_NAME
from seg2sat.geo.raster import read_raster
from seg2sat.geo.stac import COLLECTION_NAME, item_path, write_collection
from seg2sat.labels import BY_CODE, IGNORE_CODE
from seg2sat.synthesis.plan import class_table
from seg2sat.synthesis.spec import SynthesisSpec
from seg2sat.synthesis.tiles import BANDS

MANIFEST = "synthesis.jsonl"
REPORT = "report.json"


def metadata(records: list[dict[str, Any]], model: str, legend: str | None = None) -> dict[str, dict[str, Any]]:
    """FLAIR-1's metadata JSON for the accepted tiles (`legend`: declared when not FLAIR's 19 classes)."""
    out = {}
    for r in records:
        if r["state"] != "accepted":
            continue
        a, _, c, _, e, f = r["transform"]
        w, h = r["size"]
        out[f"IMG_{r['id']}"] = {
            "domain": r["domain"], "zone": r["zone"], "date": r["date"], "bands": list(BANDS),
            "patch_centroid_x": c + a * w / 2, "patch_centroid_y": f + e * h / 2,
            "synthetic": True, "source": r["source"], "edits": r["edits"], "score": r["score"], "seed": r["seed"],
            "prompt": r["prompt"], "model": model, "style": r["style"], "season": r["season"]}
        if legend is not None:  # e.g. maps of a merge13 dataset: `segment` refuses to mix legends
            out[f"IMG_{r['id']}"]["legend"] = legend
        if "ignored" in r:  # trust on: the mask holds IGNORE_CODE where the judge did not read the class
            out[f"IMG_{r['id']}"].update(ignore_code=IGNORE_CODE, ignored_pixels=r["ignored"])
    return out


def made_maps(out_dir: Path, records: list[dict[str, Any]]) -> list[np.ndarray]:
    """The codes of every accepted tile, read back from its MSK file."""
    return [read_raster(out_dir / r["mask"]).array[0] for r in records if r["state"] == "accepted"]


def targets_report(spec: SynthesisSpec, records: list[dict[str, Any]], made: list[np.ndarray]) -> list[dict[str, Any]]:
    """Each target class: asked, the least and mean share in edited tiles, the tiles holding it."""
    edited = [m for m, r in zip(made, [r for r in records if r["state"] == "accepted"], strict=True)
              if r["source_kind"] == "edited"]
    out = []
    for t in spec.target.classes:
        shares = [float((m == t.code).mean()) for m in edited]
        holding = sum(bool((m == t.code).any()) for m in made)
        reached = (min(shares) >= t.share if shares else False) if t.share else holding >= (t.tiles or 0)
        out.append({"class": BY_CODE[t.code].name, "share": t.share, "tiles": t.tiles, "reached": reached,
                    "min_share_edited": round(min(shares), 4) if shares else None,
                    "mean_share_edited": round(float(np.mean(shares)), 4) if shares else None,
                    "tiles_holding": holding})
    return out


def trust_report(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Ignored pixels of the kept pairs (None when trust was off): their count and share, the most in one tile."""
    kept = [r for r in records if r["state"] == "accepted" and "ignored" in r]
    if not kept:
        return None
    pixels = sum(r["size"][0] * r["size"][1] for r in kept)
    ignored = [r["ignored"] for r in kept]
    return {"ignore_code": IGNORE_CODE, "ignored_pixels": int(sum(ignored)),
            "ignored_share": round(sum(ignored) / max(1, pixels), 5),
            "max_tile_share": round(max(i / (r["size"][0] * r["size"][1]) for i, r in zip(ignored, kept, strict=True)), 5)}


def write_dataset(out_dir: Path, spec: SynthesisSpec, records: list[dict[str, Any]], real: list[np.ndarray],
                  model: str, diversity: dict[str, float] | None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest, report, STAC Collection, then FLAIR's metadata JSON from the tiles' records; returns the report.

    Each write is atomic; the metadata (what `prepare` reads) comes last and is fsynced: it marks
    the dataset finished.
    """
    for name in (MANIFEST, REPORT, COLLECTION_NAME, METADATA_NAME):  # what a killed run left
        sweep_tmp(out_dir, name)
    write_text(out_dir / MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    made = made_maps(out_dir, records)
    scores = [r["score"] for r in records if r["score"] is not None]
    report = {"tiles": len(records), "accepted": len(made), "dropped": sum(r["state"] == "dropped" for r in records),
              "retried": sum(r["attempts"] > 1 for r in records), "threshold": spec.quality.threshold,
              "score": {"min": min(scores), "mean": round(float(np.mean(scores)), 4), "max": max(scores)}
              if scores else None,  # None: unjudged (no judge_data)
              "targets": targets_report(spec, records, made),
              "classes": {"sources": class_table(real), "made": class_table(made)},
              "diversity": diversity, "trust": trust_report(records), "model": model, **(extra or {})}
    write_json(out_dir / REPORT, report)
    items = [item_path(out_dir / r["image"]) for r in records if r.get("image")]
    if items:
        write_collection(out_dir, items, title=f"Seg2Sat synthetic pairs ({len(items)})",
                         description=f"Generated aerial images and their land-cover masks (FLAIR codes), made by "
                                     f"{model} with `seg2sat synthesize`.", keywords=("synthetic", "training data",
                                                                                    "aerial imagery", "land cover"))
    write_json(out_dir / METADATA_NAME, metadata(records, model, (extra or {}).get("legend")), durable=True)
    return report

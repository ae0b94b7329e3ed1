"""One synthetic pair: edit the map, render it, judge it (other seeds while under the bar), write it.

A pair is written in FLAIR-1's layout (`flair_aerial_train/<domain>/<zone>/img/IMG_<id>.tif`,
three uint8 bands R, G, B; `flair_labels_train/<domain>/<zone>/msk/MSK_<id>.tif`, the codes),
both on the map's grid (CRS and transform), each written atomically, then its record
(`tiles/<id>.json`, written last: the completion mark a rerun skips on). A pair whose best
re-segmented mIoU stays under the quality bar after its retries is dropped, and its record says
so. Without a judge (`judge_data: null`, e.g. land cover of a place with no real images to
train one on) every pair is kept unjudged (score null). With `trust` on, the pixels of a kept
pair that the judge does not read as their class are written as labels.IGNORE_CODE in its mask
(seg2sat.synthesis.trust; the record counts them, the metadata declares the code). The mask carries the FLAIR colour table,
and each pair has a STAC Item beside its image (`IMG_<id>.stac.json`: the image, the mask as a
`labels` asset, the model, map, prompt and seed). Everything a tile does depends on its plan
entry alone, so any number of workers writes the same GeoTIFF bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg2sat.atomic import sweep_tmp, write_json
from seg2sat.data.synthetic import tile_paths
from seg2sat.evaluation.judge import Judge
from seg2sat.evaluation.scores import segmentation_scores
from seg2sat.generation.files import versions
from seg2sat.generation.models import LoadedModel
from seg2sat.generation.sampling import PromptSpec, Sampling
from seg2sat.generation.tiling import generate_image
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.places import place_for
from seg2sat.geo.stac import AssetFile, Provenance, item_path, raster_item, write_item
from seg2sat.geo.styles import colormap
from seg2sat.labels import IGNORE_CODE, class_shares
from seg2sat.prompts import caption_for
from seg2sat.synthesis.edit import ShapeBank, edit_map
from seg2sat.synthesis.plan import TilePlan
from seg2sat.synthesis.sources import MaskItem
from seg2sat.synthesis.spec import Quality
from seg2sat.synthesis.trust import Trust

RECORDS_DIR = "tiles"
BANDS = ("red", "green", "blue")  # what a synthetic IMG holds (FLAIR's IMG has NIR and elevation too)
NO_DOMAIN = "D000_0000"  # maps of a landcover source have no FLAIR domain: the split is by domain


def record_path(out_dir: Path, tile_id: str) -> Path:
    """The record of a tile (written last: a tile is finished once it exists)."""
    return out_dir / RECORDS_DIR / f"{tile_id}.json"


def read_record(out_dir: Path, tile_id: str) -> dict[str, Any] | None:
    """A finished tile's record, or None (missing, or unreadable: the tile is redone)."""
    path = record_path(out_dir, tile_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class Renderer:
    """What every worker holds: the model, the judge, the sources' maps and the shape bank."""

    model: LoadedModel
    judge: Judge | None  # None: pairs are kept unjudged
    items: list[list[MaskItem]]
    bank: ShapeBank
    sampling: Sampling
    prompt: PromptSpec
    quality: Quality
    out_dir: Path
    trust: Trust | None = None  # None: every pixel of a kept pair keeps its map's label

    def _map(self, plan: TilePlan) -> tuple[MaskItem, np.ndarray, list[dict[str, Any]]]:
        item = self.items[plan.source][plan.item]
        if not plan.edited:
            return item, item.codes, []
        codes, edits = edit_map(item.codes, plan.needs, self.bank, np.random.default_rng(plan.seed))
        return item, codes, edits

    def _prompt(self, item: MaskItem, codes: np.ndarray, plan: TilePlan) -> str:
        if self.prompt.text:
            return self.prompt.text
        h, w = codes.shape
        place = place_for({k: v for k, v in item.meta.items() if k == "domain" and v}, item.crs, item.transform, w, h)
        return caption_for(class_shares(codes, item.valid), template=self.prompt.template, place=place,
                           season=plan.season or False, style=plan.style or self.prompt.style)

    def score(self, image: np.ndarray, codes: np.ndarray) -> float | None:
        """The judge's re-segmented mIoU of an image against its own map (None without a judge)."""
        if self.judge is None:
            return None
        return segmentation_scores([self.judge.classify(image)], [codes])["miou"]

    def render(self, codes: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        """One image of a map at a seed, with the run's sampling settings."""
        return generate_image(self.model.pipe, codes, prompt, **self.sampling.replace(seed=seed).kwargs())

    def make(self, plan: TilePlan) -> dict[str, Any]:
        """Render, judge, retry, write one tile; returns its record (also written, last)."""
        t0 = time.perf_counter()
        # 1. The map (edited if planned) and its prompt.
        item, codes, edits = self._map(plan)
        prompt = self._prompt(item, codes, plan)
        # 2. Seeds in turn until one passes the bar (the best is kept; without a judge, the first).
        best: tuple[float | None, int, np.ndarray] | None = None
        attempts = 0
        for k in range(1 + self.quality.retries):
            attempts += 1
            image = self.render(codes, prompt, plan.seed + k)
            score = self.score(image, codes)
            if best is None or (score is not None and score > best[0]):
                best = (score, plan.seed + k, image)
            if score is None or score >= self.quality.threshold:
                break
        score, seed, image = best
        accepted = score is None or score >= self.quality.threshold
        # 3. The pair in FLAIR-1's layout and its STAC Item, then the record.
        domain, zone = item.meta.get("domain") or NO_DOMAIN, item.meta.get("zone") or "Z0_SY"
        record = {"id": plan.id, "index": plan.index, "state": "accepted" if accepted else "dropped",
                  "score": None if score is None else round(score, 4), "seed": seed, "attempts": attempts,
                  "prompt": prompt, "source": item.ref,
                  "source_kind": "edited" if plan.edited else item.ref.split(":")[0],
                  "edits": edits, "domain": domain, "zone": zone, "date": item.meta.get("date"),
                  "style": plan.style, "season": plan.season, "crs": item.crs, "transform": list(item.transform)[:6],
                  "size": [int(codes.shape[1]), int(codes.shape[0])],
                  "shares": class_shares(codes, item.valid)}
        if accepted:
            img, msk = self._write_pair(self._trusted(image, codes, record), image, item, record)
            record.update(image=str(img.relative_to(self.out_dir)), mask=str(msk.relative_to(self.out_dir)))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(record_path(self.out_dir, plan.id), record, durable=True)  # last: the tile is finished
        return record

    def _trusted(self, image: np.ndarray, codes: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """The mask to write: with `trust`, pixels the judge does not read as their class become IGNORE_CODE.

        The record counts them (`ignored`); without trust the mask is the map, and the record unchanged.
        """
        if self.trust is None:
            return codes
        untrusted = self.trust.untrusted(image, codes)
        record["ignored"] = int(untrusted.sum())
        return np.where(untrusted, np.uint8(IGNORE_CODE), codes).astype(codes.dtype)

    def _write_pair(self, codes: np.ndarray, image: np.ndarray, item: MaskItem, record: dict[str, Any]
                    ) -> tuple[Path, Path]:
        """The mask (with its colour table), the image and the pair's STAC Item, each atomically."""
        img, msk = tile_paths(self.out_dir, record["domain"], record["zone"], record["id"])
        for path in (msk, img, item_path(img)):  # what a killed run left of this pair
            sweep_tmp(path.parent, path.name)
        write_geotiff(msk, codes[None], item.crs, item.transform, colormap=colormap())
        write_geotiff(img, np.moveaxis(image, -1, 0), item.crs, item.transform)
        provenance = Provenance(model=str(self.model.source), landcover=item.ref, prompt=record["prompt"],
                                seed=record["seed"], software=versions())
        mask = AssetFile(msk, ("data", "labels"), "Land-cover mask (FLAIR codes)")
        write_item(raster_item(img, provenance, item_id=f"IMG_{record['id']}", assets={"mask": mask}),
                   item_path(img), collection_dir=self.out_dir)
        return img, msk

    def diversity(self, plans: list[TilePlan], seeds: int = 3) -> dict[str, float]:
        """How different the renderings of one map are, next to renderings of different maps.

        Mean pairwise cosine distance in the judge's feature space between `seeds` renderings of
        each map (within), and between the first renderings of different maps (between).
        """
        from seg2sat.evaluation.judge import image_features

        firsts, within = [], []
        for plan in plans:
            item, codes, _ = self._map(plan)
            prompt = self._prompt(item, codes, plan)
            feats = image_features(self.judge, np.stack([self.render(codes, prompt, plan.seed + 1000 + k)
                                                         for k in range(seeds)]))
            sims = feats @ feats.T
            within.append(float(1 - sims[np.triu_indices(seeds, 1)].mean()))
            firsts.append(feats[0])
        between = np.stack(firsts) @ np.stack(firsts).T
        b = float(1 - between[np.triu_indices(len(firsts), 1)].mean()) if len(firsts) > 1 else float("nan")
        return {"maps": len(plans), "seeds": seeds, "within_map": round(float(np.mean(within)), 4),
                "between_maps": round(b, 4), "within_over_between": round(float(np.mean(within)) / b, 3)}


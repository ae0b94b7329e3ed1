"""Captions: `Aerial view of <place>. <class>, <class>, ...`.

The public Seg2Sat ControlNet was trained on exactly this form, with classes by descending
share and the place from an OpenStreetMap reverse-geocoding of the tile. We never call a
web geocoder: the place comes from metadata (an OSM `display_name` when the metadata carries
one), else from the FLAIR domain's department(s), else from the raster's own location looked
up offline (`seg2sat.geo.places`); "France" is only the last resort for a French tile.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from seg2sat.labels import BY_NAME, class_shares

DEFAULT_TEMPLATE = "Aerial view of {place}. {classes}"
DEFAULT_PLACE = "France"

# Metropolitan French departments (FLAIR domains are named D<dept>_<year>).
DEPARTMENTS: dict[str, str] = {
    "01": "Ain", "02": "Aisne", "03": "Allier", "04": "Alpes-de-Haute-Provence",
    "05": "Hautes-Alpes", "06": "Alpes-Maritimes", "07": "Ardèche", "08": "Ardennes",
    "09": "Ariège", "10": "Aube", "11": "Aude", "12": "Aveyron", "13": "Bouches-du-Rhône",
    "14": "Calvados", "15": "Cantal", "16": "Charente", "17": "Charente-Maritime", "18": "Cher",
    "19": "Corrèze", "2A": "Corse-du-Sud", "2B": "Haute-Corse", "21": "Côte-d'Or",
    "22": "Côtes-d'Armor", "23": "Creuse", "24": "Dordogne", "25": "Doubs", "26": "Drôme",
    "27": "Eure", "28": "Eure-et-Loir", "29": "Finistère", "30": "Gard", "31": "Haute-Garonne",
    "32": "Gers", "33": "Gironde", "34": "Hérault", "35": "Ille-et-Vilaine", "36": "Indre",
    "37": "Indre-et-Loire", "38": "Isère", "39": "Jura", "40": "Landes", "41": "Loir-et-Cher",
    "42": "Loire", "43": "Haute-Loire", "44": "Loire-Atlantique", "45": "Loiret", "46": "Lot",
    "47": "Lot-et-Garonne", "48": "Lozère", "49": "Maine-et-Loire", "50": "Manche",
    "51": "Marne", "52": "Haute-Marne", "53": "Mayenne", "54": "Meurthe-et-Moselle",
    "55": "Meuse", "56": "Morbihan", "57": "Moselle", "58": "Nièvre", "59": "Nord", "60": "Oise",
    "61": "Orne", "62": "Pas-de-Calais", "63": "Puy-de-Dôme", "64": "Pyrénées-Atlantiques",
    "65": "Hautes-Pyrénées", "66": "Pyrénées-Orientales", "67": "Bas-Rhin", "68": "Haut-Rhin",
    "69": "Rhône", "70": "Haute-Saône", "71": "Saône-et-Loire", "72": "Sarthe", "73": "Savoie",
    "74": "Haute-Savoie", "75": "Paris", "76": "Seine-Maritime", "77": "Seine-et-Marne",
    "78": "Yvelines", "79": "Deux-Sèvres", "80": "Somme", "81": "Tarn", "82": "Tarn-et-Garonne",
    "83": "Var", "84": "Vaucluse", "85": "Vendée", "86": "Vienne", "87": "Haute-Vienne",
    "88": "Vosges", "89": "Yonne", "90": "Territoire de Belfort", "91": "Essonne",
    "92": "Hauts-de-Seine", "93": "Seine-Saint-Denis", "94": "Val-de-Marne", "95": "Val-d'Oise",
}

# Style presets for inference and the app: appended to the caption.
STYLES: dict[str, str] = {
    "photo": "",
    "pencil_sketch": "pencil sketch, black and white drawing",
    "oil_on_canvas": "oil on canvas, impressionist painting",
    "watercolor": "watercolor painting",
    "lego": "made of lego bricks",
    "winter": "in winter, covered in snow",
}

# FLAIR-1/2 domains are `D064_2021`; FLAIR-HUB's are `D064-2021`, and a domain spanning two
# departments is written with both 3-digit numbers (`D024047-2021`: Dordogne and Lot-et-Garonne).
_DOMAIN = re.compile(r"^D((?:\d{3}){2}|0*\d{1,3}|2A|2B)[_-](\d{4}|195X)$", re.IGNORECASE)


def _department(num: str) -> str:
    num = num.upper().lstrip("0") or "0"
    key = num.zfill(2) if num.isdigit() else num
    return DEPARTMENTS.get(key, f"department {num}")


def department_of(domain: str | None) -> str | None:
    """`D064_2021` -> `Pyrénées-Atlantiques`; `D024047-2021` -> `Dordogne and Lot-et-Garonne`.

    Unknown numbers give `department 99`; anything that is not a domain gives None.
    """
    if not domain:
        return None
    m = _DOMAIN.match(domain.strip())
    if not m:
        return None
    num = m.group(1)
    if len(num) == 6 and num.isdigit():
        return " and ".join(_department(n) for n in (num[:3], num[3:]))
    return _department(num)


def place_of(meta: Mapping[str, Any] | None, fallback: str | None = DEFAULT_PLACE) -> str | None:
    """The place named in a caption, from tile metadata, with no network call.

    `display_name`, else the domain's department, else `fallback` (pass None to try the
    raster's own location next, see `seg2sat.geo.places`).
    """
    meta = meta or {}
    name = meta.get("display_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    return department_of(meta.get("domain")) or fallback


def season_of(date: str | None) -> str | None:
    """Meteorological season of an ISO date (northern hemisphere)."""
    if not date:
        return None
    try:
        month = dt.date.fromisoformat(str(date)[:10]).month
    except ValueError:
        return None
    return ("winter", "spring", "summer", "autumn")[(month % 12) // 3]


def ordered_classes(shares: Mapping[str, float], min_share: float = 0.0) -> list[str]:
    """Class names by descending share (ties by legend code), dropping those < min_share."""
    for name in shares:
        if name not in BY_NAME:
            raise KeyError(f"{name!r} is not a FLAIR class name")
    kept = [(n, s) for n, s in shares.items() if s > 0 and s >= min_share]
    return [n for n, _ in sorted(kept, key=lambda kv: (-kv[1], BY_NAME[kv[0]].code))]


def caption_for(
    shares: Mapping[str, float],
    meta: Mapping[str, Any] | None = None,
    template: str = DEFAULT_TEMPLATE,
    min_share: float = 0.0,
    place: str | None = None,
    season: bool | str = False,
    style: str | None = None,
) -> str:
    """The caption of a tile from its class shares and metadata.

    Args:
        shares: class name -> share of the tile.
        meta: tile metadata (`display_name`, `domain`, `date`, ...).
        template: with `{place}` and `{classes}` fields.
        min_share: classes below this share are left out.
        place: overrides the place from metadata.
        season: append the season of `meta["date"]` (e.g. "In autumn."), or this season's name.
        style: a key of STYLES or free text appended at the end.
    """
    text = template.format(place=place or place_of(meta), classes=", ".join(ordered_classes(shares, min_share)))
    if season and (s := season if isinstance(season, str) else season_of((meta or {}).get("date"))):
        text += f". In {s}."
    if style:
        extra = STYLES.get(style, style)
        if extra:
            text = f"{text.rstrip('.')}, {extra}"
    return text


def prompt_for(codes: np.ndarray, valid: np.ndarray | None = None, *, text: str | None = None,
               template: str = DEFAULT_TEMPLATE, place: str | None = None, style: str | None = None,
               season: str | None = None) -> str:
    """The prompt of a map: the fixed `text`, or the caption of its class shares.

    The one rule `infer`, the app and evaluation share, so a map gets the same prompt in each.
    """
    if text:
        return str(text)
    return caption_for(class_shares(codes, valid), template=template, place=place or None, season=season or False,
                       style=style or None)

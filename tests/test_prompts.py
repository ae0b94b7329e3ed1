import pytest

from seg2sat.prompts import (
    DEFAULT_TEMPLATE,
    caption_for,
    department_of,
    ordered_classes,
    place_of,
    season_of,
)


def test_caption_form_and_order():
    shares = {"water": 0.2, "building": 0.5, "deciduous": 0.2, "snow": 0.1}
    meta = {"display_name": "Mourenx, Pau, France"}
    # ties (water/deciduous at 0.2) break by legend code: water 5 before deciduous 7
    assert caption_for(shares, meta) == "Aerial view of Mourenx, Pau, France. building, water, deciduous, snow"
    assert DEFAULT_TEMPLATE == "Aerial view of {place}. {classes}"
    assert caption_for(shares, meta, min_share=0.15).endswith("building, water, deciduous")


def test_place_falls_back_to_department_then_france():
    assert place_of({"domain": "D064_2021"}) == "Pyrénées-Atlantiques"
    assert place_of({"domain": "D002_2020"}) == "Aisne"
    assert department_of("D099_2021") == "department 99"
    assert department_of("not-a-domain") is None
    assert place_of({}) == "France" and place_of(None) == "France"
    assert caption_for({"water": 1.0}, place="Lyon") == "Aerial view of Lyon. water"


def test_season_and_style():
    assert season_of("2021-10-14") == "autumn" and season_of("2020-01-02") == "winter"
    assert season_of("garbage") is None
    cap = caption_for({"water": 1.0}, {"date": "2021-07-01"}, season=True)
    assert cap == "Aerial view of France. water. In summer."
    assert caption_for({"water": 1.0}, style="lego") == "Aerial view of France. water, made of lego bricks"
    assert caption_for({"water": 1.0}, style="in the style of Monet").endswith("water, in the style of Monet")


def test_unknown_class_name_raises():
    with pytest.raises(KeyError, match="'road' is not a FLAIR class name"):
        ordered_classes({"road": 1.0})


def test_flairhub_domains_name_their_departments():
    assert department_of("D004-2021") == "Alpes-de-Haute-Provence"
    assert department_of("D024047-2021") == "Dordogne and Lot-et-Garonne"
    assert department_of("D059062-2021") == "Nord and Pas-de-Calais"
    assert department_of("D004-195X") == "Alpes-de-Haute-Provence"
    assert place_of({"domain": "D033-2018"}) == "Gironde"
    assert place_of({}, fallback=None) is None

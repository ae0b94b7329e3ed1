import re

import numpy as np
import pytest

from seg2sat import labels
from seg2sat.errors import LegendError


def _readme_legend(flair_samples):
    text = (flair_samples / "README.md").read_text(encoding="utf-8")
    return [(int(c), n.strip(), h) for c, n, h in re.findall(r"(\d+) ([a-z ]+?) (#[0-9a-f]{6})", text)]


def test_legend_matches_the_flair_readme(flair_samples):
    expected = _readme_legend(flair_samples)
    assert len(expected) == 19
    assert [(c.code, c.name, c.hex) for c in labels.CLASSES] == expected


def test_palette_is_a_lookup_table_by_code():
    assert labels.PALETTE.shape == (20, 3) and labels.PALETTE.dtype == np.uint8
    assert tuple(labels.PALETTE[1]) == (0xDB, 0x0E, 0x9A)
    assert tuple(labels.PALETTE[19]) == (0, 0, 0)
    assert len({tuple(labels.PALETTE[c]) for c in labels.CODES}) == 19  # colours are distinct
    with pytest.raises(ValueError):
        labels.PALETTE[1] = 0  # read-only: one source of truth


def test_merge13_keeps_1_12_and_merges_the_rest():
    codes = np.arange(1, 20, dtype=np.uint8)
    assert labels.merge13(codes).tolist() == list(range(1, 13)) + [19] * 7
    assert labels.merge13(codes, compact=True).tolist() == list(range(1, 13)) + [13] * 7


def test_names_and_codes_lookup():
    assert labels.class_name(5) == "water"
    assert labels.code_of("Agricultural Land") == 11
    with pytest.raises(KeyError, match="code 20 is not in the FLAIR legend"):
        labels.class_name(20)
    with pytest.raises(KeyError, match="'road' is not a FLAIR class name"):
        labels.code_of("road")


def test_codes_are_contiguous_so_in_legend_is_a_range_check():
    assert labels.CODES == tuple(range(labels.MIN_CODE, labels.MAX_CODE + 1))
    assert labels.OTHER_CODE == 19 and labels.class_name(labels.OTHER_CODE) == "other"


def test_check_codes_passes_legend_codes_through_unchanged():
    codes = np.arange(1, 20, dtype=np.uint8).reshape(1, 19)
    out = labels.check_codes(codes, "m.tif")
    assert out is codes
    np.testing.assert_array_equal(out, np.arange(1, 20).reshape(1, 19))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_check_codes_rejects_0_and_20_naming_source_values_and_counts(dtype):
    codes = np.full((4, 4), 5, dtype)
    codes[0, :3] = 0
    codes[3, 3] = 20
    with pytest.raises(LegendError, match=r"^mask.tif: codes outside the FLAIR legend 1..19 \(0: 3 px, 20: 1 px\)$"):
        labels.check_codes(codes, "mask.tif")
    with pytest.raises(LegendError, match=r"^codes outside the FLAIR legend 1..19 \(20: 1 px\)$"):
        labels.check_codes(np.array([1, 20, 19], dtype))


def test_check_codes_rejects_non_integer_dtypes():
    with pytest.raises(LegendError, match=r"^x.png: class codes must be integers, got dtype float32$"):
        labels.check_codes(np.ones((2, 2), np.float32), "x.png")


def test_in_legend_accepts_whole_codes_of_any_dtype():
    assert labels.in_legend(np.array([0, 1, 19, 20, 255], np.uint8)).tolist() == [False, True, True, False, False]
    assert labels.in_legend(np.array([-1.0, 1.0, 5.5, 19.0, np.nan])).tolist() == [False, True, False, True, False]
    assert bool(labels.in_legend(7.0)) and not bool(labels.in_legend(7.5))


def test_describe_counts_most_frequent_first_then_by_value():
    values = np.array([42, 0, 0, 0, 7, 7, 3, 3])
    assert labels.describe_counts(values) == "0: 3 px, 3: 2 px, 7: 2 px, 42: 1 px"
    assert labels.describe_counts(values, limit=2) == "0: 3 px, 3: 2 px"
    assert labels.describe_counts(np.array([2.5, 2.5])) == "2.5: 2 px"


def test_class_shares_sorted_by_share_and_masked():
    codes = np.array([[1, 1, 5], [5, 5, 19]], dtype=np.uint8)
    shares = labels.class_shares(codes)
    assert list(shares) == ["water", "building", "other"]
    assert shares["water"] == pytest.approx(0.5)
    valid = np.array([[True, True, False], [False, False, True]])
    assert labels.class_shares(codes, valid) == {"building": pytest.approx(2 / 3), "other": pytest.approx(1 / 3)}
    assert labels.class_shares(codes, np.zeros_like(valid)) == {}


def test_legend_markdown():
    md = labels.legend_markdown()
    assert md.count("\n") == 20 and "| 13 | swimming pool | `#3de6eb` |" in md


def test_readme_legend_table_is_generated_from_labels():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- legend:start -->\n", 1)[1].split("\n<!-- legend:end -->", 1)[0]
    assert table == labels.legend_markdown()

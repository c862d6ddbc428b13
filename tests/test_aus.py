"""AU conventions and the parsing of edit specifications."""

import numpy as np
import pytest

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import (
    AU_NAMES,
    FACS_NAMES,
    au_index,
    au_vector,
    canonical_au,
    openface_column,
    out_of_range,
    parse_authors_edit,
    parse_edit,
    parse_sweep,
)


def test_order_and_names():
    assert AU_NAMES == (
        "AU1",
        "AU2",
        "AU4",
        "AU5",
        "AU6",
        "AU9",
        "AU12",
        "AU15",
        "AU17",
        "AU20",
        "AU25",
        "AU26",
    )
    assert set(FACS_NAMES) == set(AU_NAMES)
    assert FACS_NAMES["AU12"] == "lip corner puller"


@pytest.mark.parametrize("spelling", ["AU12", "au12", "AU012", " Au 12 "])
def test_spellings(spelling):
    assert canonical_au(spelling) == "AU12"
    assert au_index(spelling) == 6


@pytest.mark.parametrize("bad", ["AU3", "AU", "12", "smile", ""])
def test_unknown_au_lists_the_valid_ones(bad):
    with pytest.raises(
        MagicFaceError, match="AU1, AU2, AU4, AU5, AU6, AU9, AU12, AU15, AU17, AU20, AU25, AU26"
    ):
        canonical_au(bad)


def test_openface_columns():
    assert openface_column("AU1") == "AU01_r"
    assert openface_column("au26") == "AU26_r"


def test_parse_edit():
    assert parse_edit("AU4=+4,AU1=+2") == {"AU4": 4.0, "AU1": 2.0}
    assert parse_edit(" au12 = -3.5 ") == {"AU12": -3.5}
    vector = au_vector(parse_edit("AU4=+4,AU1=+2"))
    assert (
        vector.dtype == np.float32 and vector[au_index("AU4")] == 4 and vector[0] == 2 and vector.sum() == 6
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("AU4", "no '='"),
        ("AU4=four", "not a number"),
        ("AU4=nan", "finite"),
        ("AU4=1,AU04=2", "twice"),
        ("", "empty"),
        ("AU7=1", "unknown action unit"),
    ],
)
def test_bad_edits(spec, message):
    with pytest.raises(MagicFaceError, match=message):
        parse_edit(spec)


def test_authors_flags():
    assert parse_authors_edit("AU4+AU1", "4+2") == {"AU4": 4.0, "AU1": 2.0}
    assert parse_authors_edit("AU12", "-3") == {"AU12": -3.0}
    with pytest.raises(MagicFaceError, match="one value per AU"):
        parse_authors_edit("AU4+AU1", "4")


def test_sweep():
    au, values = parse_sweep("AU12=-6:6:7")
    assert au == "AU12"
    np.testing.assert_array_equal(values, [-6, -4, -2, 0, 2, 4, 6])
    for bad in ("AU12=-6:6", "AU12", "AU12=-6:6:0", "AU12=a:6:3", "AU12=0:1:2.5"):
        with pytest.raises(MagicFaceError):
            parse_sweep(bad)


def test_vectors_and_range():
    with pytest.raises(MagicFaceError, match="12 entries"):
        au_vector([1.0, 2.0])
    vector = np.zeros((2, 12), np.float32)
    vector[1, 6] = 14
    vector[0, 0] = -11
    assert out_of_range(vector) == ["AU1", "AU12"]
    assert out_of_range(np.full(12, 10.0)) == []

"""Emotion presets: the EMFACS prototypes on the 12 editable AUs, intensities, and their parsing."""

import pytest

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import AU_NAMES
from magicface_jax.faces.emotions import (
    DEFAULT_INTENSITY,
    DROPPED_AUS,
    EMOTIONS,
    emotion_edit,
    parse_emotion,
)


def test_presets_cover_the_basic_emotions_with_editable_aus():
    assert set(EMOTIONS) >= {"happiness", "sadness", "surprise", "fear", "anger", "disgust"}
    for name, weights in EMOTIONS.items():
        assert weights and set(weights) <= set(AU_NAMES), name
        assert all(0 < weight <= 1 for weight in weights.values()), name
        assert not set(DROPPED_AUS.get(name, ())) & set(AU_NAMES), name  # dropped = not editable
    assert EMOTIONS["happiness"] == {"AU6": 1.0, "AU12": 1.0}  # 6+12
    assert EMOTIONS["surprise"]["AU5"] == 0.5  # 5B: slight


def test_emotion_edit_scales_the_weights():
    assert emotion_edit("happiness") == {"AU6": DEFAULT_INTENSITY, "AU12": DEFAULT_INTENSITY}
    assert emotion_edit("Surprise", 6) == {"AU1": 6.0, "AU2": 6.0, "AU5": 3.0, "AU26": 6.0}
    assert emotion_edit("sadness", -2) == {"AU1": -2.0, "AU4": -2.0, "AU15": -2.0}


def test_parse_emotion():
    assert parse_emotion("anger") == emotion_edit("anger")
    assert parse_emotion(" disgust:2.5 ") == {"AU9": 2.5, "AU15": 2.5}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("joy", ["'joy'", "happiness"]),
        ("anger:", ["no intensity", "happiness:4"]),
        ("anger:lots", ["'lots' is not a number"]),
        ("anger:11", ["anger", "-10..10"]),
        ("anger:nan", ["anger", "-10..10"]),
    ],
)
def test_bad_emotions(spec, words):
    with pytest.raises(MagicFaceError) as info:
        parse_emotion(spec)
    for word in words:
        assert word in str(info.value)

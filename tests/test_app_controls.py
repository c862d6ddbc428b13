"""The app's controls (AU sliders ↔ AU vector, presets, settings) and its service's waiting line."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from magicface_jax.app import controls
from magicface_jax.app.service import LRU, Device, DeviceSlots, ServerBusy
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus, emotions


def test_sliders_map_to_the_au_vector_in_order():
    values = [float(i) - 5.5 for i in range(aus.NUM_AUS)]
    vector = controls.au_from_sliders(values)
    assert vector.dtype == np.float32 and vector.tolist() == values
    edit = {"AU12": 4.0, "AU1": -2.5}
    sliders = controls.sliders_from_edit(edit)
    assert sliders[aus.au_index("AU12")] == 4.0 and sliders[aus.au_index("AU1")] == -2.5
    assert sum(1 for v in sliders if v) == 2
    np.testing.assert_array_equal(controls.au_from_sliders(sliders), aus.au_vector(edit))


def test_slider_labels_name_the_facs_action():
    assert controls.slider_label("AU12") == "AU12 · lip corner puller"
    assert len({controls.slider_label(au) for au in aus.AU_NAMES}) == aus.NUM_AUS


def test_emotion_sets_every_slider():
    sliders = controls.emotion_sliders("surprise", 6)
    expected = {"AU1": 6.0, "AU2": 6.0, "AU5": 3.0, "AU26": 6.0}
    assert dict(zip(aus.AU_NAMES, sliders, strict=True)) == {au: expected.get(au, 0.0) for au in aus.AU_NAMES}
    assert controls.emotion_sliders("happiness", emotions.DEFAULT_INTENSITY) == controls.sliders_from_edit(
        emotions.emotion_edit("happiness")
    )


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([0.0] * 6 + [10.5] + [0.0] * 5, ["AU12 is 10.5", "-10 to 10"]),
        ([0.0] * 11 + [-11.0], ["AU26 is -11"]),
        ([0.0] * 11 + ["4"], ["AU26 must be a number"]),
        ([0.0] * 11 + [float("nan")], ["AU26", "finite"]),
        ([0.0] * 11, ["expected 12 AU values"]),
    ],
)
def test_bad_slider_values(values, words):
    with pytest.raises(MagicFaceError) as info:
        controls.au_from_sliders(values)
    assert all(word in str(info.value) for word in words), info.value


def test_settings_from_controls():
    settings, seed = controls.settings_from_controls(10.0, 1.5, "ddim", 7.0)
    assert (settings.steps, settings.guidance, settings.sampler, seed) == (10, 1.5, "ddim", 7)
    for args, word in [
        ((0, 3.0, "unipc", 0), "steps is 0"),
        ((2.5, 3.0, "unipc", 0), "steps must be a whole number"),
        ((controls.MAX_STEPS + 1, 3.0, "unipc", 0), "give 1 to"),
        ((2, 11.0, "unipc", 0), "guidance is 11"),
        ((2, 3.0, "plms", 0), "unknown sampler 'plms'"),
        ((2, 3.0, "unipc", -1), "seed must be"),
    ]:
        with pytest.raises(MagicFaceError, match=word):
            controls.settings_from_controls(*args)


def test_sweep_values():
    name, values = controls.sweep_values("au12", -6, 6, 3)
    assert name == "AU12" and values.tolist() == [-6.0, 0.0, 6.0]
    bad = [(("AU3", 0, 1, 2), "AU3"), (("AU12", -12, 1, 2), "-10 to 10"), (("AU12", 0, 1, 1), "2 to")]
    for args, word in bad:
        with pytest.raises(MagicFaceError, match=word):
            controls.sweep_values(*args)


def test_device_slots_one_at_a_time_then_busy():
    slots = DeviceSlots(["device"], max_waiting=1)
    running, release = threading.Event(), threading.Event()

    def hold():
        with slots.acquire():
            running.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert running.wait(10)
    got = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire().__enter__()))
    waiter.start()  # waits for the device: the one place in the line
    waiter.join(0.2)
    assert waiter.is_alive() and not got
    with pytest.raises(ServerBusy, match="busy"), slots.acquire():
        pass
    release.set()
    holder.join(10)
    waiter.join(10)
    assert got == ["device"]


def test_lru_keeps_the_most_recently_used():
    cache = LRU(2)
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1
    cache["c"] = 3
    assert list(cache) == ["a", "c"]


def test_the_first_edit_of_its_kind_says_it_compiles():
    device = Device(pipe=None, executables=LRU(2), compiled=LRU(2))
    settings = EditSettings(steps=10)
    assert device.describe(settings, 128, 128, 1).startswith(
        "compiling the program for 10 unipc steps at 128x128"
    )
    device.ran(settings, 128, 128, 1)
    assert device.describe(settings, 128, 128, 1) == "sampling 10 unipc steps at 128x128"
    assert device.describe(EditSettings(steps=10, guidance=1.5), 128, 128, 1).startswith("sampling")
    for other in [(EditSettings(steps=11), 128, 128, 1), (settings, 64, 64, 1), (settings, 128, 128, 3)]:
        assert device.describe(*other).startswith("compiling"), other

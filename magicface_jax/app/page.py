"""The page: inputs (a photo, or a prepared face and background), the 12 AU sliders and the emotion
presets, the sampling settings, and the edit and sweep tabs, wired to an `EditService`.

Every handler reads uploads itself (`preprocess=False`), so a file that is not an image gets the app's
own message. A `MagicFaceError` becomes a `gr.Error`: one readable line in the page, and an error with
that message through the API; the server goes on serving.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Sequence

from magicface_jax.app import controls
from magicface_jax.app.service import EditService
from magicface_jax.assets import AUTHORS_EXAMPLES, DEMO_FACES
from magicface_jax.demo import FACE_COUNT
from magicface_jax.diffusion import SAMPLERS
from magicface_jax.editing.sweep import Sweep
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus, emotions
from magicface_jax.pipeline import MAX_SEED

# Before gradio is imported: no usage statistics, no version check.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import gradio as gr

PROGRESS = gr.Progress()

# Prepared examples, face crop and background: the demo model's synthetic portraits, the authors' photos.
EXAMPLES = (
    *((DEMO_FACES / f"face_{k}.png", DEMO_FACES / f"face_{k}_bg.png") for k in range(FACE_COUNT)),
    *((AUTHORS_EXAMPLES / f"{n}.png", AUTHORS_EXAMPLES / f"{n}_bg.png") for n in ("00381", "00025", "00512")),
)
HEIGHT = 300  # of every image on the page, in CSS pixels
TITLE = "MagicFace: edit a facial expression by Action Units"
USAGE = (
    "Upload a photo (its largest face is cropped and its background condition built), or drop a prepared "
    "face crop and background, or pick an example. Move the AU sliders or pick an emotion, then **Edit**."
)


def _path(payload) -> str | None:
    """The server-side path of an uploaded file as gradio passes it unprocessed."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return str(payload)


def _handler(fn, names: Sequence[str]):
    """`fn(values, progress)` as a gradio handler that takes the inputs `names` positionally (gradio finds
    a progress tracker only among positional parameters; the API names its parameters after them); a
    `MagicFaceError` is shown as its message."""

    def handler(*args):
        *values, progress = args
        try:
            return fn(dict(zip(names, values, strict=True)), progress)
        except MagicFaceError as err:
            raise gr.Error(" ".join(str(err).split()), print_exception=False) from None

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature(
        [
            *(inspect.Parameter(name, positional) for name in names),
            inspect.Parameter("progress", positional, default=PROGRESS),
        ]
    )
    handler.__name__ = fn.__name__
    return handler


def _status(notes: list[str], done: str) -> str:
    return "\n".join([*(f"note: {note}" for note in notes), done])


def build_page(service: EditService, notice: str | None = None) -> gr.Blocks:
    settings = service.default_settings

    def reporter(progress: gr.Progress):
        return lambda message: progress(None, desc=message)

    def prepare_photo(values, progress):
        progress(None, desc="finding the face")
        images = service.prepare_photo(_path(values["photo"]))
        return images.source, images.background, _status(images.notes, "prepared the face crop")

    def inputs(values):
        sliders = [values[au] for au in aus.AU_NAMES]
        edit_settings, seed = controls.settings_from_controls(
            values["steps"], values["guidance"], values["sampler"], values["seed"]
        )
        images = service.prepare_pair(_path(values["face"]), _path(values["background"]))
        return images, controls.au_from_sliders(sliders), edit_settings, seed

    def computed_background(values, images):
        """The background to show: the computed one, else none (the one shown stays; rewriting the same
        file for concurrent edits would race in Gradio's cache, which writes files in place)."""
        return images.background if values["background"] is None else gr.skip()

    def edit(values, progress):
        images, au, edit_settings, seed = inputs(values)
        result = service.edit(images, au, edit_settings, seed, reporter(progress))
        return result, computed_background(values, images), _status(images.notes, "done")

    def sweep(values, progress):
        images, au, edit_settings, seed = inputs(values)
        swept = Sweep(*controls.sweep_values(values["au"], values["start"], values["stop"], values["count"]))
        base = {
            name: float(value)
            for name, value in zip(aus.AU_NAMES, au, strict=True)
            if value and name != swept.au
        }
        grid = service.sweep(images, swept, base, edit_settings, seed, reporter(progress))
        return grid, computed_background(values, images), _status(images.notes, "done")

    def preset(values, progress):
        if not values["emotion"]:
            return [gr.skip()] * aus.NUM_AUS
        return controls.emotion_sliders(values["emotion"], values["intensity"])

    low, high = controls.SLIDER_RANGE
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {TITLE}\n{USAGE}")
        if notice:
            gr.Markdown(f"**Note:** {notice}", elem_id="notice")
        with gr.Row():
            photo = gr.Image(
                label="photo", type="filepath", sources=["upload"], height=HEIGHT, elem_id="photo"
            )
            face = gr.Image(label="face crop", type="filepath", format="png", height=HEIGHT, elem_id="face")
            background = gr.Image(
                label="background condition", type="filepath", format="png", height=HEIGHT, elem_id="bg"
            )
        gr.Examples(
            [[str(face), str(background)] for face, background in EXAMPLES],
            inputs=[face, background],
            label="examples (prepared face crop and background)",
        )
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    emotion = gr.Radio(list(emotions.EMOTIONS), label="emotion", elem_id="emotion")
                    intensity = gr.Slider(
                        *emotions.INTENSITY_RANGE, value=emotions.DEFAULT_INTENSITY,
                        step=controls.SLIDER_STEP, label="emotion intensity",
                    )  # fmt: skip
                sliders = []
                with gr.Row():
                    for column in range(3):
                        with gr.Column(min_width=200):
                            for au in aus.AU_NAMES[column * 4 : (column + 1) * 4]:
                                sliders.append(
                                    gr.Slider(low, high, value=0, step=controls.SLIDER_STEP,
                                              label=controls.slider_label(au), elem_id=f"slider-{au}")
                                )  # fmt: skip
                reset = gr.Button("reset the AUs", size="sm")
                with gr.Accordion("advanced", open=False):
                    with gr.Row():
                        steps = gr.Slider(1, controls.MAX_STEPS, value=settings.steps, step=1, label="steps")
                        guidance = gr.Slider(
                            *controls.GUIDANCE_RANGE, value=settings.guidance, step=0.1, label="guidance"
                        )
                        sampler = gr.Dropdown(list(SAMPLERS), value=settings.sampler, label="sampler")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                        shuffle = gr.Button("random seed", size="sm")
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("edit"):
                        run_edit = gr.Button("Edit", variant="primary", elem_id="edit")
                        result = gr.Image(label="result", format="png", interactive=False, height=HEIGHT,
                                          elem_id="result",
                                          buttons=["download", "fullscreen"])  # fmt: skip
                    with gr.Tab("sweep"):
                        with gr.Row():
                            sweep_au = gr.Dropdown(
                                [(controls.slider_label(au), au) for au in aus.AU_NAMES],
                                value="AU26",  # the AU the shipped demo model follows most plainly
                                label="AU",
                            )
                            start = gr.Slider(low, high, value=-6, step=controls.SLIDER_STEP, label="from")
                            stop = gr.Slider(low, high, value=6, step=controls.SLIDER_STEP, label="to")
                            count = gr.Slider(*controls.SWEEP_COUNTS, value=5, step=1, label="images")
                        run_sweep = gr.Button("Sweep", variant="primary")
                        grid = gr.Image(label="sweep", format="png", interactive=False,
                                        buttons=["download", "fullscreen"])  # fmt: skip
                status = gr.Markdown(elem_id="status")

        pair = {"face": face, "background": background, **dict(zip(aus.AU_NAMES, sliders, strict=True))}
        sampling = {"steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed}
        sweeping = {"au": sweep_au, "start": start, "stop": stop, "count": count}
        events = [
            (photo.upload, prepare_photo, {"photo": photo}, [face, background, status], "prepare"),
            (run_edit.click, edit, {**pair, **sampling}, [result, background, status], "edit"),
            (run_sweep.click, sweep, {**pair, **sweeping, **sampling}, [grid, background, status], "sweep"),
            (emotion.change, preset, {"emotion": emotion, "intensity": intensity}, sliders, "preset"),
        ]
        for trigger, fn, named, outputs, api_name in events:
            trigger(_handler(fn, list(named)), list(named.values()), outputs, api_name=api_name,
                    preprocess=False, concurrency_limit=None)  # fmt: skip
        intensity.release(_handler(preset, ["emotion", "intensity"]), [emotion, intensity], sliders,
                          api_visibility="private")  # fmt: skip
        # A new face crop drops the background shown, which belongs to the previous face: without one
        # uploaded after it, the edit computes it from the face.
        face.upload(lambda: None, None, background, api_visibility="private")
        reset.click(lambda: [0.0] * aus.NUM_AUS + [None], None, [*sliders, emotion], api_visibility="private")
        shuffle.click(lambda: random.randint(0, MAX_SEED), None, seed, api_visibility="private")
    return page

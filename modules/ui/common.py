"""Small helpers the tabs share: model lists for the dropdowns, switching through the queue, token counts."""

from __future__ import annotations

import gradio as gr

from modules import conditioning, hires, prompt_encoder
from modules.state import AppState

VAE_CHOICES_FIXED = ["Automatic", "None"]


def frozen(state: AppState) -> bool:
    """``--freeze-settings``: every setting is read-only, in the UI as in the API."""
    return bool(getattr(state.args, "freeze_settings", False))


def notices(state: AppState) -> str:
    return "\n\n".join(f"⚠️ {n}" for n in state.notices)


def checkpoint_titles(state: AppState) -> list[str]:
    return [i.title for i in state.models.checkpoints]


def hires_checkpoint_choices(state: AppState) -> list[str]:
    """The "Hires checkpoint" list: A1111's "Use same checkpoint", then every checkpoint's title."""
    return [hires.SAME_CHECKPOINT, *checkpoint_titles(state)]


def current_title(state: AppState) -> str | None:
    """The loaded checkpoint's title; before any is loaded, the one the setting names (if it exists)."""
    current = state.models.current
    if current is not None:
        return current.info.title
    try:
        return state.models.find(str(state.opts["sd_model_checkpoint"])).title
    except LookupError:
        return None


def vae_choices(state: AppState) -> list[str]:
    return VAE_CHOICES_FIXED + [v.name for v in state.models.vaes]


def apply_setting(state: AppState, key: str, value: object) -> None:
    """Set and save one setting on the job queue's worker (after the jobs already waiting), as a quicksetting does.

    A refused value (unknown, invalid, frozen settings) becomes a ``gr.Error`` the page shows.
    """
    try:
        state.queue.run(state.opts.set, key, value)
        state.opts.save()
    except (ValueError, LookupError, PermissionError) as e:
        raise gr.Error(str(e)) from e


def switch_checkpoint(state: AppState, title: str) -> None:
    """Make ``title`` the checkpoint (loaded on the job queue's worker, after the jobs already waiting)."""
    apply_setting(state, "sd_model_checkpoint", title)


def switch_vae(state: AppState, name: str) -> None:
    """Make ``name`` the VAE setting; the next job applies it."""
    apply_setting(state, "sd_vae", name)


def clamp(component: object, value: object) -> object:
    """``value`` kept inside a slider's range (an infotext may name 200 steps; the slider stops at 150)."""
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if isinstance(value, (int, float)) and low is not None and high is not None:
        return type(value)(min(max(value, low), high))
    return value


def token_count(state: AppState, text: str, steps: float, is_positive: bool) -> str:
    """A1111's counter: ``used/available`` tokens of the longest step of the prompt (``""`` without a model)."""
    model = state.models.current
    if model is None:
        return ""
    pipe = model.pipe
    options = prompt_encoder.EncoderOptions(emphasis=str(state.opts["emphasis"]),
                                            comma_padding_backtrack=int(state.opts["comma_padding_backtrack"]))
    encoder = prompt_encoder.PromptEncoder(pipe.text_encoder, pipe.tokenizer, state.embeddings, options)
    used, available = conditioning.token_counter(encoder, text or "", int(steps), is_positive)
    return f"{used}/{available}"

"""Zero-shot classification of slides with a slide encoder that has a text tower.

A slide encoder with a text tower (TITAN, PRISM) offers ``text_features(prompts)`` (L2-normalised
text embeddings), ``slide_to_text_space(embeddings)`` (slide embeddings projected into the joint
space and L2-normalised) and ``logit_scale``. Each class is described by one or more prompts;
its classifier is the mean of its normalised prompt embeddings, normalised again (the recipe of
the CLIP-style zero-shot classifiers these models publish, e.g. TITAN's); a slide's class
scores are the softmax of ``logit_scale x`` cosine similarities.

A model whose official zero-shot rule differs offers ``class_probabilities(embeddings,
prompts per class) -> (S, C)``, which is used instead (PRISM: one softmax over every prompt,
a class's probability the sum over its prompts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from histobag.errors import ExtractorArgumentError

__all__ = ["class_embeddings", "zero_shot"]


def _needs_text(encoder: Any) -> None:
    missing = [
        name
        for name in ("text_features", "slide_to_text_space")
        if not callable(getattr(encoder, name, None))
    ]
    if missing:
        raise ExtractorArgumentError(
            f"{getattr(encoder, 'tag', encoder)} has no text tower ({', '.join(missing)} "
            "missing): zero-shot needs a slide encoder trained with text, e.g. titan or prism."
        )


def _check_prompts(class_prompts: Mapping[str, Sequence[str]]) -> None:
    if not class_prompts or any(isinstance(p, str) or not p for p in class_prompts.values()):
        raise ExtractorArgumentError(
            "class_prompts maps each class to a non-empty list of prompts, e.g. "
            "{'tumour': ['invasive carcinoma'], 'normal': ['normal tissue']}"
        )


def class_embeddings(encoder: Any, class_prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """(C, T) float32: per class, the normalised mean of its normalised prompt embeddings."""
    _needs_text(encoder)
    _check_prompts(class_prompts)
    rows = []
    for prompts in class_prompts.values():
        text = torch.nn.functional.normalize(encoder.text_features(list(prompts)).float(), dim=-1)
        rows.append(torch.nn.functional.normalize(text.mean(dim=0), dim=-1))
    return torch.stack(rows).cpu()


def zero_shot(
    encoder: Any,
    slide_embeddings: Any,
    class_prompts: Mapping[str, Sequence[str]],
) -> dict[str, np.ndarray]:
    """Class probabilities of slides from their embeddings and a few prompts per class.

    Args:
        encoder: The slide encoder that made the embeddings (with a text tower).
        slide_embeddings: (S, E) or (E,) embeddings (tensor or array), as the encoder gives
            them (e.g. read back with :func:`histobag.slide_encoding.read_table`).
        class_prompts: Class name → prompts describing it.

    Returns:
        ``{"classes": names (C,), "probabilities": (S, C), "logits": (S, C), "predicted":
        (S,) class names}``; with a model's own rule, ``logits`` are log-probabilities.
    """
    _needs_text(encoder)
    slides = torch.as_tensor(np.asarray(slide_embeddings, dtype=np.float32))
    if slides.ndim == 1:
        slides = slides[None]
    names = np.array(list(class_prompts))
    official = getattr(encoder, "class_probabilities", None)
    with torch.inference_mode():
        if callable(official):  # the model's own rule
            _check_prompts(class_prompts)
            groups = [list(prompts) for prompts in class_prompts.values()]
            probabilities = official(slides, groups).float().cpu()
            logits = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
        else:
            image = encoder.slide_to_text_space(slides).float().cpu()
            image = torch.nn.functional.normalize(image, dim=-1)
            classes = class_embeddings(encoder, class_prompts)
            logits = float(getattr(encoder, "logit_scale", 1.0)) * image @ classes.T
            probabilities = logits.softmax(dim=-1)
    return {
        "classes": names,
        "probabilities": probabilities.numpy(),
        "logits": logits.numpy(),
        "predicted": names[probabilities.numpy().argmax(axis=1)],
    }

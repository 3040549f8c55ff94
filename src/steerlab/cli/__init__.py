"""steerlab's command line. Each command group lives in its own module and registers on `app`.

The modules import torch and transformers, so they are imported lazily: ``steerlab --help`` lists
the commands from :data:`COMMANDS` (name → modules that register it, one-line summary) without
importing any of them, and running ``steerlab NAME ...`` imports only NAME's modules
(lm-evaluation-harness does the same with its lazy registries). A test checks that every summary
is the start of its command's own help, so the two cannot drift apart.
"""

from __future__ import annotations

from .app import app

# command -> (modules that register it, the first words of its help)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "info": (("info",), "Show architecture, layer count, d_model, dtype, device and chat-template facts of a model."),
    "extract": (("vectors",), "Extract steering vectors."),
    "generate": (("steer",), "Generate (optionally steered) completions, batched."),
    "sweep": (("steer",), "Generate every (layer, coefficient, question) cell, coefficients packed per batch."),
    "calibrate": (("calibrate",), "Find the layer and the coefficient range where a vector steers a behaviour."),
    "condition": (
        ("condition",),
        "Calibrate a CAST condition: the layer, threshold and comparator that best separate prompts to steer.",
    ),
    "persona": (("persona",), "Persona vectors (Chen et al. 2025): prompted personas, judged, filtered, extracted."),
    "traits": (("traits",), "Built-in traits (persona-vectors schema): list them, show one."),
    "monitor": (("monitor",), "Project activations on a vector: (a·v)/‖v‖ per sample, layer and reduction."),
    "compare": (
        ("compare",),
        "Cosine per layer between every two vectors, norms, distances, and the random-direction baseline.",
    ),
    "inspect": (("readout",), "Read a vector per layer: the tokens it promotes and suppresses, its size, its cosines."),
    "bake": (("bake",), "Bake one direction into the weights"),
    "diff": (("diff", "diff_study"), "Vectors from fine-tuning: LoRA-fine-tune a model on behaviour data"),
    "dataset": (("dataset",), "Build contrastive pair datasets and import chat data."),
    "serve": (("serve",), "Serve a model with an OpenAI-compatible API (chat, completions, streaming, logprobs)"),
    "report": (("report",), "Build DIR/report.html (plots, tables, sample generations; opens offline)."),
    "demo": (
        ("demo",),
        "Contrastive vs fine-tuning directions on the built-in deception data, steering study, "
        "persona pipeline and monitoring",
    ),
    "export": (("vectors",), "Export vectors to other tools' formats."),
    "import": (("vectors",), "Import vectors from other tools' formats."),
}


def main() -> None:
    """The ``steerlab`` console script."""
    app()


__all__ = ["COMMANDS", "app", "main"]

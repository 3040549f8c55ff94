"""Artifact file names of every run directory, defined once: pipelines write them, the report and
the CLI read them (docs/design.md §9)."""

from __future__ import annotations

# sweep
GENERATIONS = "generations.jsonl"
CONTROL_GENERATIONS = "control_generations.jsonl"
MARGINS = "margins.csv"
SCORES = "scores.csv"
SWEEP = "sweep.json"
# persona
RESPONSES = "responses.jsonl"
JUDGED = "judged.jsonl"
PAIRS = "pairs.json"
VECTORS_DIR = "vectors"
VECTORS_MANIFEST = "vectors/manifest.json"
# steerlab compare
COMPARE = "compare.json"
# diff study
ADAPTER_DIR = "adapter"
DIRECTIONS = "directions.json"  # the two directions compared (was compare.json, read from old runs)
POSITIONS = "positions.json"
STUDY = "study.json"
STUDY_MARGINS = "study_margins.csv"
SAMPLES = "samples.jsonl"
# demo
SUMMARY = "summary.json"
MONITOR = "monitor.json"
PERSONA_STEERING = "persona_steering.json"
# vector readouts (steerlab inspect --out; pipelines.readouts): one readout document per vector
READOUTS_DIR = "readouts"
# calibration (steerlab calibrate)
CALIBRATION = "calibration.json"  # steerlab calibrate; read by --coeff auto and the report
CALIBRATION_PLOT = "calibration.html"  # its plot, beside it
# report
REPORT = "report.html"

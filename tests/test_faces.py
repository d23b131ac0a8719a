import importlib.util
import logging
import re
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.blazeface import (
    INPUT_ALIGN_PX,
    INPUT_SIZE_PX,
    BlazeFaceModel,
    InputShape,
    decode_boxes,
    generate_anchor_centers,
    resize_model_input,
)
from edge_agent.config import BLAZEFACE_FLOAT_MODEL, DEFAULT_BLAZEFACE_MODEL, DetectorConfig
from edge_agent.errors import ConfigError, ModelError
from edge_agent.faces import (
    BLAZEFACE_MAX_MODEL_FACE_PX,
    BLAZEFACE_MIN_MODEL_FACE_PX,
    MAX_INPUT_AREA_PX,
    FaceBox,
    create_detector,
)
from edge_agent.tiling import FrameBoxes, Level, merge_boxes, plan_pyramid, tile_starts
from tests.conftest import DATA_DIR, LABELLED_DIR, MEDIA_DIR, REPO_ROOT

# Frames of the bundled videos used in the classroom composite, by file name.
VIDEO_FRAMES = {"WolfgangLanger_Pexels.mp4": (0, 150, 300, 450), "single_face.mp4": (0, 40)}
COMPOSITE_WIDTH_PX = 1920
COMPOSITE_HEIGHT_PX = 1080
# A classroom camera of that size shows most faces 20 to 40 px wide.
COMPOSITE_FACE_PX = (20.0, 40.0)
COMPOSITE_GAP_PX = 12


@dataclass(frozen=True)
class Photo:
    image: np.ndarray
    faces: list[FaceBox]


@dataclass(frozen=True)
class Composite:
    image: np.ndarray
    truth: np.ndarray  # (N, 4) x_min, y_min, x_max, y_max in composite pixels


@pytest.fixture(scope="module")
def blazeface():
    return create_detector(DetectorConfig())


@pytest.fixture(scope="module")
def haar():
    return create_detector(DetectorConfig(backend="haar"))


def read_image(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return image


def read_video_frames() -> list[np.ndarray]:
    frames = []
    for name, indices in VIDEO_FRAMES.items():
        capture = cv2.VideoCapture(str(MEDIA_DIR / name))
        for index in indices:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            assert ok, f"cannot read frame {index} of {name}"
            frames.append(frame)
        capture.release()
    return frames


def as_corners(faces: list[FaceBox]) -> np.ndarray:
    corners = [(face.x, face.y, face.x + face.width, face.y + face.height) for face in faces]
    return np.array(corners).reshape(-1, 4)


def matches(box: np.ndarray, truth: np.ndarray) -> bool:
    """Return whether a detected box is the true face: IoU >= 0.3, or its centre inside the true box."""
    intersection_width = max(0.0, min(box[2], truth[2]) - max(box[0], truth[0]))
    intersection_height = max(0.0, min(box[3], truth[3]) - max(box[1], truth[1]))
    intersection = intersection_width * intersection_height
    box_area = (box[2] - box[0]) * (box[3] - box[1])
    truth_area = (truth[2] - truth[0]) * (truth[3] - truth[1])
    union = box_area + truth_area - intersection
    center_x, center_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    center_inside = truth[0] <= center_x <= truth[2] and truth[1] <= center_y <= truth[3]
    return intersection / union >= 0.3 or center_inside


def build_composite(photos: list[Photo], seed: int) -> Composite:
    """Shrink the photos so their faces are 20-40 px wide and pack them in rows on a noise background.

    The true boxes are the full-size detections, scaled and shifted with their photo.
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 12, (COMPOSITE_HEIGHT_PX, COMPOSITE_WIDTH_PX, 3))
    image = np.clip(noise, 0, 255).astype(np.uint8)
    truth = []
    x_px = y_px = COMPOSITE_GAP_PX
    row_height_px = 0
    for index in range(1000):
        photo = photos[index % len(photos)]
        widths = [face.width for face in photo.faces]
        # Draw the smallest face's width so that the largest stays within 40 px as well.
        low_px, high_px = COMPOSITE_FACE_PX
        smallest_face_px = rng.uniform(low_px, high_px * min(widths) / max(widths))
        scale = smallest_face_px / min(widths)
        small = cv2.resize(photo.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height_px, width_px = small.shape[:2]
        if x_px + width_px + COMPOSITE_GAP_PX > COMPOSITE_WIDTH_PX:
            x_px = COMPOSITE_GAP_PX
            y_px += row_height_px + COMPOSITE_GAP_PX
            row_height_px = 0
        if y_px + height_px + COMPOSITE_GAP_PX > COMPOSITE_HEIGHT_PX:
            break
        image[y_px : y_px + height_px, x_px : x_px + width_px] = small
        for face in photo.faces:
            truth.append(
                (
                    face.x * scale + x_px,
                    face.y * scale + y_px,
                    (face.x + face.width) * scale + x_px,
                    (face.y + face.height) * scale + y_px,
                )
            )
        x_px += width_px + COMPOSITE_GAP_PX
        row_height_px = max(row_height_px, height_px)
    return Composite(image=image, truth=np.array(truth))


@pytest.fixture(scope="module")
def photos(blazeface) -> list[Photo]:
    images = [read_image(MEDIA_DIR / "multi_face.jpg"), read_image(MEDIA_DIR / "single_face.jpg")]
    images += [read_image(path) for path in sorted(LABELLED_DIR.glob("*.jpg"))]
    images += read_video_frames()
    return [Photo(image=image, faces=blazeface.detect(image)) for image in images]


def plan(frame_width_px: int, frame_height_px: int, min_face_px: float):
    return plan_pyramid(
        frame_width_px,
        frame_height_px,
        min_face_px,
        BLAZEFACE_MIN_MODEL_FACE_PX,
        BLAZEFACE_MAX_MODEL_FACE_PX,
        MAX_INPUT_AREA_PX,
        INPUT_ALIGN_PX,
    )


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) * (2.0 / 255.0) - 1.0


def test_anchors_grid_of_stride_4():
    centers = generate_anchor_centers()
    assert centers.shape == (48 * 48, 2)
    np.testing.assert_allclose(centers[0], [2.0, 2.0])
    np.testing.assert_allclose(centers[1], [6.0, 2.0])
    np.testing.assert_allclose(centers[48], [2.0, 6.0])
    np.testing.assert_allclose(centers[-1], [190.0, 190.0])


def test_anchors_non_square_input():
    centers = generate_anchor_centers(height_px=64, width_px=96)
    assert centers.shape == (16 * 24, 2)
    np.testing.assert_allclose(centers[23], [94.0, 2.0])
    np.testing.assert_allclose(centers[24], [2.0, 6.0])


def test_anchors_match_model_outputs():
    model = BlazeFaceModel(BLAZEFACE_FLOAT_MODEL)
    for height_px, width_px in [(192, 192), (96, 320)]:
        black = np.full((height_px, width_px, 3), -1.0, dtype=np.float32)
        regressors, logits = model.invoke(black)
        anchor_count = len(generate_anchor_centers(height_px, width_px))
        assert regressors.shape == (anchor_count, 16)
        assert logits.shape == (anchor_count,)


def test_decode_boxes_offsets_from_anchor():
    anchors = np.array([[100.0, 50.0]])
    regressors = np.zeros((1, 16))
    regressors[0, :4] = [10.0, -4.0, 40.0, 20.0]
    np.testing.assert_allclose(decode_boxes(regressors, anchors), [[90.0, 36.0, 130.0, 56.0]])


def test_resized_input_finds_same_face():
    """A face in a 192x192 input is found at the same place when the input is a larger canvas."""
    model = BlazeFaceModel(BLAZEFACE_FLOAT_MODEL)
    assert model.resizable
    face = cv2.cvtColor(read_image(MEDIA_DIR / "single_face.jpg"), cv2.COLOR_BGR2RGB)
    small = cv2.resize(face, (INPUT_SIZE_PX, INPUT_SIZE_PX), interpolation=cv2.INTER_AREA)
    native = model.detect(to_model_input(small), 0.6)
    canvas = np.zeros((256, 448, 3), dtype=np.uint8)
    canvas[32 : 32 + INPUT_SIZE_PX, 224 : 224 + INPUT_SIZE_PX] = small
    resized = model.detect(to_model_input(canvas), 0.6)

    assert len(native.scores) > 0
    assert len(resized.scores) > 0
    best_native = native.boxes[np.argmax(native.scores)]
    best_resized = resized.boxes[np.argmax(resized.scores)] - [224, 32, 224, 32]
    np.testing.assert_allclose(best_resized, best_native, atol=3.0)
    assert resized.scores.max() == pytest.approx(native.scores.max(), abs=0.05)


def test_resize_rejects_unaligned_shape():
    content = BLAZEFACE_FLOAT_MODEL.read_bytes()
    with pytest.raises(ValueError, match="multiple of 32"):
        resize_model_input(content, InputShape(100, 192))


def test_resize_rejects_other_graph():
    content = (DATA_DIR / "weights" / "fer_emotion_model_quantized.tflite").read_bytes()
    with pytest.raises(ModelError, match="0 bilinear upsampling ops"):
        resize_model_input(content, InputShape(192, 192))


def test_blazeface_multi_face_finds_five(blazeface):
    faces = blazeface.detect(read_image(MEDIA_DIR / "multi_face.jpg"))
    assert len(faces) == 5, f"found {len(faces)} faces, expected 5"


def test_blazeface_single_face_finds_one(blazeface):
    image = read_image(MEDIA_DIR / "single_face.jpg")
    faces = blazeface.detect(image)
    assert len(faces) == 1, f"found {len(faces)} faces, expected 1"
    face = faces[0]
    center_x, center_y = face.x + face.width / 2, face.y + face.height / 2
    assert 0.3 * image.shape[1] < center_x < 0.7 * image.shape[1]
    assert 0.3 * image.shape[0] < center_y < 0.8 * image.shape[0]
    assert 0.5 < face.score <= 1.0


@pytest.mark.parametrize("path", sorted(LABELLED_DIR.glob("*.jpg")), ids=lambda path: path.name)
def test_blazeface_close_up_inside_frame(blazeface, path):
    image = read_image(path)
    faces = blazeface.detect(image)
    assert len(faces) == 1, f"found {len(faces)} faces in {path.name}, expected 1"
    face = faces[0]
    assert face.x >= 0
    assert face.y >= 0
    assert face.x + face.width <= image.shape[1]
    assert face.y + face.height <= image.shape[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_blazeface_classroom_composite(blazeface, photos, seed):
    composite = build_composite(photos, seed)
    truth_count = len(composite.truth)
    assert truth_count >= 60, f"the composite holds only {truth_count} faces"

    found = as_corners(blazeface.detect(composite.image))
    found_faces = sum(any(matches(box, truth) for box in found) for truth in composite.truth)
    false_boxes = [
        box.round().tolist() for box in found if not any(matches(box, truth) for truth in composite.truth)
    ]
    assert found_faces >= 0.9 * truth_count, f"found {found_faces} of {truth_count} faces, expected 90 %"
    assert not false_boxes, f"{len(false_boxes)} false detections among {len(found)}: {false_boxes}"
    assert len(found) <= truth_count, f"{len(found)} boxes for {truth_count} faces: some face has two boxes"


def test_blazeface_logs_plan_once(caplog):
    detector = create_detector(DetectorConfig())
    frame = read_image(MEDIA_DIR / "single_face.jpg")
    with caplog.at_level(logging.INFO, logger="edge_agent.faces"):
        detector.detect(frame)
        detector.detect(frame)
    plan_messages = [record.getMessage() for record in caplog.records if record.name == "edge_agent.faces"]
    assert len(plan_messages) == 1, plan_messages
    assert "572x562" in plan_messages[0]


def test_haar_single_face_finds_one(haar):
    image = read_image(MEDIA_DIR / "single_face.jpg")
    faces = haar.detect(image)
    assert len(faces) == 1, f"found {len(faces)} faces, expected 1"
    assert faces[0].score == 1.0
    blazeface_face = create_detector(DetectorConfig()).detect(image)[0]
    assert matches(as_corners(faces)[0], as_corners([blazeface_face])[0])


def test_haar_respects_min_face_px(haar):
    image = read_image(MEDIA_DIR / "single_face.jpg")
    large_only = create_detector(DetectorConfig(backend="haar", min_face_px=400))
    assert large_only.detect(image) == []
    assert len(haar.detect(image)) == 1


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
def test_create_detector_missing_model(tmp_path, backend):
    missing = tmp_path / "no_such_model.bin"
    with pytest.raises(ModelError) as raised:
        create_detector(DetectorConfig(backend=backend, model=missing))
    assert str(missing) in str(raised.value)


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
def test_create_detector_corrupt_model(tmp_path, backend):
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_text("not a model")
    with pytest.raises(ModelError) as raised:
        create_detector(DetectorConfig(backend=backend, model=corrupt))
    assert str(corrupt) in str(raised.value)


def test_create_detector_wrong_tflite():
    emotion_model = DATA_DIR / "weights" / "fer_emotion_model_quantized.tflite"
    with pytest.raises(ModelError) as raised:
        create_detector(DetectorConfig(model=emotion_model))
    assert "192, 192, 3" in str(raised.value)
    assert str(emotion_model) in str(raised.value)


def test_create_detector_unknown_backend():
    config = DetectorConfig.model_construct(backend="yolo")
    with pytest.raises(ConfigError) as raised:
        create_detector(config)
    assert "'yolo'" in str(raised.value)
    assert "blazeface, haar" in str(raised.value)


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
def test_detect_gray_and_bgra(backend):
    detector = create_detector(DetectorConfig(backend=backend))
    bgr = read_image(MEDIA_DIR / "single_face.jpg")
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert len(detector.detect(gray)) == 1
    assert len(detector.detect(gray[:, :, np.newaxis])) == 1
    assert len(detector.detect(bgra)) == 1


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
@pytest.mark.parametrize(
    "shape",
    [
        (0, 0, 3), (0, 0), (0, 5, 4), (0, 640, 3),
        (1, 1, 3), (1, 1), (1, 1, 4),
        (19, 640, 3), (20, 20, 3), (24, 2000, 3),
    ],
)
def test_detect_tiny_frames(backend, shape):
    detector = create_detector(DetectorConfig(backend=backend))
    assert detector.detect(np.full(shape, 128, dtype=np.uint8)) == []


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((64, 64, 3), dtype=np.float32), "float32"),
        (np.zeros((64, 64, 2), dtype=np.uint8), "(64, 64, 2)"),
        (np.zeros(64, dtype=np.uint8), "(64,)"),
    ],
    ids=["float32", "two-channel", "one-dimensional"],
)
def test_detect_invalid_frames(backend, frame, message):
    detector = create_detector(DetectorConfig(backend=backend))
    with pytest.raises(ValueError, match=re.escape(message)):
        detector.detect(frame)


@pytest.mark.parametrize("backend", ["blazeface", "haar"])
def test_detect_rejects_non_array(backend):
    detector = create_detector(DetectorConfig(backend=backend))
    with pytest.raises(TypeError, match="list"):
        detector.detect([[0, 0, 0]])


def test_blazeface_video_frame_one_tile(caplog):
    detector = create_detector(DetectorConfig(min_face_px=60))
    frame = read_video_frames()[0]
    assert frame.shape == (360, 640, 3)
    with caplog.at_level(logging.INFO, logger="edge_agent.faces"):
        faces = detector.detect(frame)
    assert detector.plan_for(640, 360).tile_count == 1
    assert "1 levels, 1 tiles" in caplog.text
    assert len(faces) == 1, f"found {len(faces)} faces, expected 1"


def test_blazeface_fixed_input_model(monkeypatch):
    """A model that cannot be resized runs on 192x192 tiles and still finds the faces."""
    monkeypatch.setattr(BlazeFaceModel, "_check_resizable", lambda self: False)
    detector = create_detector(DetectorConfig())
    image = read_image(MEDIA_DIR / "multi_face.jpg")
    faces = detector.detect(image)
    plan = detector.plan_for(image.shape[1], image.shape[0])
    assert all((level.tile_width_px, level.tile_height_px) == (192, 192) for level in plan.levels)
    assert len(faces) == 5, f"found {len(faces)} faces, expected 5"


def test_plan_small_frame_one_tile():
    small = plan(640, 360, 60)
    assert small.levels == (Level(0, 171, 96, 192, 96, small.levels[0].tiles),)  # 640 px * 16 / 60
    assert small.tile_count == 1


def test_plan_classroom_frame_tiles():
    classroom = plan(1920, 1080, 20)
    first = classroom.levels[0]
    assert (first.width_px, first.height_px) == (1536, 864)  # 1920 px * 16 / 20
    assert classroom.tile_count > 1
    for level in classroom.levels:
        assert level.tile_width_px % INPUT_ALIGN_PX == 0
        assert level.tile_height_px % INPUT_ALIGN_PX == 0
        for tile in level.tiles:
            assert tile.x_px >= 0
            assert tile.y_px >= 0
            if len(level.tiles) > 1:
                assert level.tile_width_px * level.tile_height_px <= MAX_INPUT_AREA_PX
    last = classroom.levels[-1]
    assert len(last.tiles) == 1
    assert min(last.width_px, last.height_px) <= BLAZEFACE_MAX_MODEL_FACE_PX


def test_tile_starts_cover_length():
    starts = tile_starts(1000, 300, 4)
    assert starts == [0, 233, 467, 700]
    assert tile_starts(200, 300, 1) == [0]


@settings(max_examples=300, deadline=None)
@given(
    frame_width_px=st.integers(16, 2000),
    frame_height_px=st.integers(16, 2000),
    min_face_px=st.integers(8, 200),
    data=st.data(),
)
def test_plan_fits_every_face(frame_width_px, frame_height_px, min_face_px, data):
    """Every face of min_face_px or more lies wholly in a tile that shows it within the model's face sizes."""
    largest_face_px = min(frame_width_px, frame_height_px)
    if largest_face_px < min_face_px:
        return
    face_px = data.draw(st.integers(min_face_px, largest_face_px), label="face_px")
    face_x_px = data.draw(st.integers(0, frame_width_px - face_px), label="face_x_px")
    face_y_px = data.draw(st.integers(0, frame_height_px - face_px), label="face_y_px")
    pyramid = plan(frame_width_px, frame_height_px, min_face_px)

    def shows_face(level: Level) -> bool:
        scale_x = level.width_px / frame_width_px
        scale_y = level.height_px / frame_height_px
        model_face_px = face_px * min(scale_x, scale_y)
        if not BLAZEFACE_MIN_MODEL_FACE_PX - 1e-9 <= model_face_px <= BLAZEFACE_MAX_MODEL_FACE_PX:
            return False
        x_min, x_max = face_x_px * scale_x, (face_x_px + face_px) * scale_x
        y_min, y_max = face_y_px * scale_y, (face_y_px + face_px) * scale_y
        return any(
            tile.x_px - 0.5 <= x_min
            and x_max <= tile.x_px + level.tile_width_px + 0.5
            and tile.y_px - 0.5 <= y_min
            and y_max <= tile.y_px + level.tile_height_px + 0.5
            for tile in level.tiles
        )

    assert any(shows_face(level) for level in pyramid.levels)


def test_merge_prefers_whole_box_over_cut():
    candidates = FrameBoxes(
        boxes=np.array([[100.0, 100.0, 130.0, 140.0], [100.0, 100.0, 140.0, 140.0]]),
        scores=np.array([0.95, 0.7]),
        cut=np.array([True, False]),
    )
    assert merge_boxes(candidates, iou_threshold=0.3).tolist() == [1]


def test_merge_drops_contained_box():
    # IoU 0.25 stays below the threshold, but the small box lies wholly inside the large one.
    candidates = FrameBoxes(
        boxes=np.array([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]]),
        scores=np.array([0.9, 0.8]),
        cut=np.array([False, False]),
    )
    assert merge_boxes(candidates, iou_threshold=0.3).tolist() == [0]


def test_merge_keeps_separate_faces():
    candidates = FrameBoxes(
        boxes=np.array([[0.0, 0.0, 30.0, 30.0], [25.0, 0.0, 55.0, 30.0], [0.0, 100.0, 20.0, 120.0]]),
        scores=np.array([0.6, 0.9, 0.7]),
        cut=np.array([False, False, True]),
    )
    assert merge_boxes(candidates, iou_threshold=0.3).tolist() == [1, 0, 2]


@pytest.fixture(scope="module")
def int8_model_path(tmp_path_factory):
    """An int8 copy of the float BlazeFace model, made now by bench/detector_int8.py."""
    spec = importlib.util.spec_from_file_location("detector_int8", REPO_ROOT / "bench" / "detector_int8.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path_factory.mktemp("int8") / "face_detection_full_range_int8.tflite"
    module.quantize(BLAZEFACE_FLOAT_MODEL, output)
    return output


@pytest.mark.slow
def test_bundled_int8_model_is_reproducible(int8_model_path):
    """The default detector file is what bench/detector_int8.py makes from the float model."""
    assert int8_model_path.read_bytes() == DEFAULT_BLAZEFACE_MODEL.read_bytes(), (
        "edge_agent/models/face_detection_full_range_int8.tflite differs from a fresh quantization: "
        "run python bench/detector_int8.py edge_agent/models/face_detection_full_range_int8.tflite"
    )


def test_default_detector_is_int8():
    detector = create_detector(DetectorConfig())
    assert detector.model.model_path == DEFAULT_BLAZEFACE_MODEL
    assert detector.model.input_dtype == np.int8
    assert detector.model.resizable


@pytest.mark.slow
def test_int8_model_finds_faces(int8_model_path):
    detector = create_detector(DetectorConfig(model=int8_model_path))
    assert detector.model.input_dtype == np.int8
    assert detector.model.resizable
    multi = detector.detect(read_image(MEDIA_DIR / "multi_face.jpg"))
    single = detector.detect(read_image(MEDIA_DIR / "single_face.jpg"))
    assert len(multi) == 5, f"found {len(multi)} faces, expected 5"
    assert len(single) == 1, f"found {len(single)} faces, expected 1"


@pytest.mark.slow
def test_int8_model_classroom_composite(int8_model_path, photos):
    detector = create_detector(DetectorConfig(model=int8_model_path))
    composite = build_composite(photos, seed=0)
    found = as_corners(detector.detect(composite.image))
    found_faces = sum(any(matches(box, truth) for box in found) for truth in composite.truth)
    false_boxes = [box for box in found if not any(matches(box, truth) for truth in composite.truth)]
    assert found_faces >= 0.9 * len(composite.truth), f"found {found_faces} of {len(composite.truth)} faces"
    assert not false_boxes, f"{len(false_boxes)} false detections among {len(found)}"


def test_blazeface_frees_other_sizes():
    detector = create_detector(DetectorConfig())
    detector.detect(np.full((1080, 1920, 3), 128, dtype=np.uint8))
    large_shapes = set(detector.model._interpreters)
    detector.detect(read_video_frames()[0])
    plan = detector.plan_for(640, 360)
    expected = {InputShape(level.tile_height_px, level.tile_width_px) for level in plan.levels}
    assert set(detector.model._interpreters) == expected
    assert not large_shapes & expected

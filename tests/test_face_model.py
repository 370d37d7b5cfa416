"""The ICT-FaceKit asset: the build script reproduces the source meshes, the committed asset is complete and
compact, sampled persons differ at the model's own scale, and the simulator renders them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dpface_lib import REPO_ROOT
from dpface_lib.simulate.face import load_obj
from dpface_lib.simulate.ict_face import EXPRESSION_WEIGHTS, ICT_ASSET, IctModel, load_ict_model

sys.path.insert(0, str(REPO_ROOT / "tools"))
from build_face_model import build, main  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "ict_mini" / "FaceXModel"
#: float16 displacements: a relative error of 2^-11 of the largest one
FLOAT16_TOLERANCE_MM = 0.01


def obj_vertices_mm(name: str, count: int) -> np.ndarray:
    return load_obj(FIXTURE / name)[0][:count] * 10.0


def test_build_reproduces_the_source_meshes_for_coefficient_vectors(tmp_path: Path) -> None:
    out = tmp_path / "asset.npz"
    assert main([str(FIXTURE.parent), "--out", str(out), "--vertices", "6", "--expressions",
                 "jawOpen,browDown_L"]) == 0
    model = IctModel(out)
    neutral = obj_vertices_mm("generic_neutral_mesh.obj", 6)
    ids = [obj_vertices_mm(f"identity{i:03d}.obj", 6) for i in range(3)]
    jaw, brow = obj_vertices_mm("jawOpen.obj", 6), obj_vertices_mm("browDown_L.obj", 6)
    rng = np.random.default_rng(0)
    for _ in range(4):
        w = rng.standard_normal(3)
        blend = {"jawOpen": float(rng.random()), "browDown_L": float(rng.random())}
        expected = neutral + sum(wi * (m - neutral) for wi, m in zip(w, ids, strict=True))
        expected += blend["jawOpen"] * (jaw - neutral) + blend["browDown_L"] * (brow - neutral)
        got = model.vertices(w, blend) + model.centre
        assert np.abs(got - expected).max() < FLOAT16_TOLERANCE_MM
    # the cut keeps only triangles among the first 6 vertices, with valid UVs
    arrays = build(FIXTURE, vertices=6, expressions=("jawOpen",))
    assert arrays["faces"].max() < 6 and len(arrays["faces"]) == 4  # 2 of 3 quads -> 4 triangles
    assert arrays["faces_uv"].max() < len(arrays["uv"])
    assert list(arrays["landmarks"]) == [0, 2, 4]


def test_the_committed_asset_is_complete_and_compact() -> None:
    assert ICT_ASSET.stat().st_size < 12 * 2**20
    model = load_ict_model()
    assert model.model.vertices.shape == (11248, 3) and model.identity.shape == (100, 11248, 3)
    assert set(name for weights in EXPRESSION_WEIGHTS.values() for name in weights) <= set(model.expressions)
    assert len(model.model.landmarks["chin"]) == 17 and model.model.region.sum() == 6706
    span = np.ptp(model.model.vertices, axis=0)
    assert 120 < span[0] < 300 and 150 < span[1] < 400  # a real head in mm, not cm
    with pytest.raises(ValueError, match="identity weights must have shape"):
        model.vertices(np.zeros(3))
    with pytest.raises(ValueError, match="blendshape 'smirk' is not in the asset"):
        model.vertices(np.zeros(100), {"smirk": 1.0})


def test_persons_differ_at_the_models_own_scale() -> None:
    from dpface_lib.simulate.diversity import identity_variation

    ict = identity_variation("ict", persons=8)
    james = identity_variation("james", persons=8)
    assert 2.0 < ict["median_mm"] < 20.0  # millimetres of shape, neither identical nor caricatures
    assert ict["median_mm"] > james["median_mm"]  # real identity modes vary more than the scan's proportions
    yawn = load_ict_model().vertices(np.zeros(100), "yawning") - load_ict_model().model.vertices
    assert np.abs(yawn).max() > 5.0  # the jaw opens by millimetres


def test_simulate_face_model_ict_writes_a_readable_set(tmp_path: Path) -> None:
    from dpface_lib import cli
    from dpface_lib.data import FaceDPDataset

    out = tmp_path / "ict"
    assert cli.main(["simulate", "--out", str(out), "--face-model", "ict", "--persons", "2", "--test-persons",
                     "1", "--size", "64x64", "--cameras", "1", "--views-per-person", "2", "--lights-per-view",
                     "1", "--quiet"]) == 0
    sample = FaceDPDataset(out, "train")[0]
    mask = sample["mask"].numpy()
    assert mask.sum() > 200 and (sample["depth"].numpy()[mask] > 500).all()

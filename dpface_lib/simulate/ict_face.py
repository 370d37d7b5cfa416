"""Many faces from an open morphable model: ICT-FaceKit's identity and expression shape modes.

The asset ``assets/ict_face.npz`` is built by ``tools/build_face_model.py`` from ICT-FaceKit (USC ICT
Vision and Graphics Lab, MIT licence; see ``assets/ATTRIBUTION.md``). It holds the face and head-and-neck
part of ICT's generic neutral mesh (mm, y up, the face looking along +z), 100 identity modes and a set of
ARKit-style expression blendshapes, all as displacements from the neutral mesh. A person is
``neutral + sum_i w_i identity_i`` with ``w ~ N(0, identity_sigma^2)`` at the model's own scale (ICT samples
unit normals); an expression adds weighted blendshapes (:data:`EXPRESSION_WEIGHTS`).

Eyes, mouth interior, teeth and eyelashes are not in the asset: they are holes in the mesh, so the renderer
sees the background through them and the ground-truth mask leaves them out. The albedo is a procedural skin
detail texture in ICT's UV layout (multi-octave value noise with pores), tinted per person by the same skin
tones as the scan-based model (:func:`dpface_lib.simulate.face.skin_albedo`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from dpface_lib.simulate.face import ASSETS, FaceModel

ICT_ASSET = ASSETS / "ict_face.npz"
#: blendshape weights of the benchmark's expressions (0..1, ARKit names)
EXPRESSION_WEIGHTS: dict[str, dict[str, float]] = {
    "neutral": {},
    "frowning": {"browDown_L": 0.9, "browDown_R": 0.9, "browInnerUp_L": 0.2, "browInnerUp_R": 0.2,
                 "mouthFrown_L": 0.7, "mouthFrown_R": 0.7, "noseSneer_L": 0.3, "noseSneer_R": 0.3},
    "yawning": {"jawOpen": 0.85, "mouthFunnel": 0.25, "eyeSquint_L": 0.5, "eyeSquint_R": 0.5,
                "browInnerUp_L": 0.3, "browInnerUp_R": 0.3},
}
#: multi-PIE 68 landmark groups, in the labels of the scan-based model
LANDMARK_GROUPS = {"chin": range(0, 17), "reyebrow": range(17, 22), "leyebrow": range(22, 27),
                   "nose": range(27, 36), "reye": range(36, 42), "leye": range(42, 48),
                   "mouth": range(48, 68)}


class IctModel:
    """The loaded asset: the neutral head as a :class:`FaceModel` (``model``, landmark-centred, with the
    face area as its ``region``), the ``identity`` (K, V, 3) and ``expressions`` {name: (V, 3)} modes (mm)."""

    def __init__(self, path: str | Path = ICT_ASSET) -> None:
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        landmarks = arrays["landmarks"].astype(np.int64)
        vertices = arrays["vertices"].astype(np.float64)
        self.centre = vertices[landmarks].mean(axis=0) if len(landmarks) else vertices.mean(axis=0)
        region = np.zeros(len(vertices))
        region[: int(arrays["face_vertices"])] = 1.0
        groups = {name: vertices[landmarks[list(idx)]] - self.centre for name, idx in LANDMARK_GROUPS.items()
                  if len(landmarks) >= 68}
        self.model = FaceModel(vertices - self.centre, arrays["faces"].astype(np.int64),
                               arrays["uv"].astype(np.float64), arrays["faces_uv"].astype(np.int64),
                               skin_detail_texture(), groups, region)
        self.identity = arrays["identity"]
        self.identity_sigma = float(arrays["identity_sigma"])
        self.expressions = dict(zip(arrays["expression_names"].tolist(), arrays["expressions"], strict=True))

    def vertices(self, identity: np.ndarray, expression: str | dict[str, float] = "neutral") -> np.ndarray:
        """(V, 3) float64 mm of a person (identity weights ``(K,)``) with an expression (a name of
        :data:`EXPRESSION_WEIGHTS` or ``{blendshape: weight}``), in the landmark-centred frame."""
        identity = np.asarray(identity, dtype=np.float64)
        if identity.shape != (len(self.identity),):
            raise ValueError(f"identity weights must have shape ({len(self.identity)},), "
                             f"got {identity.shape}")
        out = self.model.vertices + np.tensordot(identity, self.identity.astype(np.float64), axes=1)
        weights = EXPRESSION_WEIGHTS[expression] if isinstance(expression, str) else expression
        for name, weight in weights.items():
            if name not in self.expressions:
                raise ValueError(f"blendshape {name!r} is not in the asset; it has "
                                 f"{sorted(self.expressions)}")
            out = out + weight * self.expressions[name].astype(np.float64)
        return out

    def sample_identity(self, rng: np.random.Generator) -> np.ndarray:
        """Identity weights ``(K,)`` at the model's own scale."""
        return rng.standard_normal(len(self.identity)) * self.identity_sigma


@lru_cache(maxsize=2)
def load_ict_model(path: str = str(ICT_ASSET)) -> IctModel:
    """The bundled ICT asset (cached)."""
    return IctModel(path)


#: names accepted by ``dpface simulate --face-model`` (the first is the default)
FACE_MODELS = ("ict", "james")


def face_model(name: str) -> FaceModel:
    """The :class:`FaceModel` a simulated set renders: ``"ict"`` (this module's morphable model, whose
    persons carry an ``identity``) or ``"james"`` (the head scan of
    :func:`dpface_lib.simulate.face.load_face_model`)."""
    if name == "ict":
        return load_ict_model().model
    if name == "james":
        from dpface_lib.simulate.face import load_face_model

        return load_face_model()
    raise ValueError(f"face model must be one of {FACE_MODELS}, got {name!r}")


@lru_cache(maxsize=1)
def skin_detail_texture(size: int = 512, seed: int = 7) -> np.ndarray:
    """(size, size, 3) float32 grey-ish skin detail in [0, 1]: value noise over four octaves (mean 0.78) with
    small dark pores, so DP matching has texture to lock on to. Deterministic."""
    rng = np.random.default_rng(seed)
    detail = np.zeros((size, size))
    for octave, amplitude in ((8, 0.05), (32, 0.04), (128, 0.03), (256, 0.02)):
        coarse = rng.standard_normal((octave + 1, octave + 1))
        t = np.linspace(0, octave, size)
        i = np.minimum(t.astype(int), octave - 1)
        f = t - i
        rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
        detail += amplitude * (rows[:, i] * (1 - f) + rows[:, i + 1] * f)
    pores = rng.random((size, size)) < 0.01
    grey = np.clip(0.78 + detail - 0.08 * pores, 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)

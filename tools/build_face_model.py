"""Build the simulator's compact ICT-FaceKit asset from a local copy of the model.

    python tools/build_face_model.py /path/to/ICT-FaceKit [--out dpface_lib/simulate/assets/ict_face.npz]

Input: a checkout of ICT-FaceKit (USC ICT Vision and Graphics Lab, MIT licence), fetched once by a
developer; nothing is downloaded here or at run time. Its ``FaceXModel/`` folder holds the generic neutral
mesh, 100 identity meshes ``identity000.obj`` ... and 53 ARKit-style expression meshes. A shape mode is a
mesh minus the neutral mesh; ICT samples identity weights from a standard normal, so the modes carry their
own scale.

Output (``np.savez_compressed``, no pickles), for the face and head-and-neck vertices only (the first
``--vertices`` = 11248 of 26719; eyes, mouth interior, teeth and eyelashes are left out, so they are holes
that the simulator's mask excludes):

- ``vertices`` (V, 3) float32 mm, the neutral mesh (ICT's cm x 10; y up, the face looking along +z);
- ``faces`` (F, 3) int32 triangles (ICT's quads split along their first diagonal), ``faces_uv`` (F, 3)
  int32 and ``uv`` (T, 2) float32;
- ``identity`` (K, V, 3) float16 mm displacements, ``identity_sigma`` float32 (the std of the weights: 1);
- ``expression_names`` (E,) str and ``expressions`` (E, V, 3) float16 mm displacements;
- ``landmarks`` (68,) int32 vertex indices (multi-PIE 68 order), ``face_vertices`` int32 (the count of
  vertices in ICT's narrow face area, the region of the ground-truth mask).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpface_lib.fileio import atomic_write  # noqa: E402
from dpface_lib.simulate.face import load_obj  # noqa: E402

#: ICT's vertex ranges (its README): the narrow face area [0, 6706) is the ground-truth mask's region (the
#: full face area [0, 9409) reaches under the chin and over the ears); head and neck run to 11248.
FACE_VERTICES = 6706
HEAD_VERTICES = 11248
CM_TO_MM = 10.0
#: blendshapes kept for the benchmark's expressions (neutral, frowning, yawning) and a few more.
EXPRESSIONS = ("browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "mouthFrown_L", "mouthFrown_R",
               "noseSneer_L", "noseSneer_R", "jawOpen", "mouthFunnel", "eyeSquint_L", "eyeSquint_R",
               "eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R")


def read_vertices(path: Path, count: int) -> np.ndarray:
    """The first ``count`` ``v`` records of an OBJ as float64 (count, 3)."""
    rows = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("v "):
                rows.append(line.split()[1:4])
                if len(rows) == count:
                    break
    if len(rows) < count:
        raise ValueError(f"{path}: {len(rows)} vertices, expected at least {count}")
    return np.asarray(rows, dtype=np.float64)


def build(model_dir: Path, vertices: int = HEAD_VERTICES, identities: int | None = None,
          expressions: tuple[str, ...] = EXPRESSIONS) -> dict[str, np.ndarray]:
    """The asset's arrays from ``model_dir`` (ICT's ``FaceXModel`` folder)."""
    neutral, uv, faces, faces_uv = load_obj(model_dir / "generic_neutral_mesh.obj")
    keep = np.all(faces < vertices, axis=1)
    faces, faces_uv = faces[keep], faces_uv[keep]
    used_uv = np.unique(faces_uv)
    remap = np.full(len(uv), -1, dtype=np.int64)
    remap[used_uv] = np.arange(len(used_uv))
    base = neutral[:vertices]
    names = sorted(model_dir.glob("identity*.obj"))[:identities]
    if not names:
        raise ValueError(f"{model_dir}: no identity*.obj meshes")
    identity = np.stack([read_vertices(p, vertices) - base for p in names]) * CM_TO_MM
    shapes = np.stack([read_vertices(model_dir / f"{name}.obj", vertices) - base for name in expressions])
    index_file = model_dir / "vertex_indices.json"
    landmarks = json.loads(index_file.read_text())["idx_to_landmark_verts"] if index_file.is_file() else []
    return {
        "vertices": (base * CM_TO_MM).astype(np.float32),
        "faces": faces.astype(np.int32),
        "faces_uv": remap[faces_uv].astype(np.int32),
        "uv": uv[used_uv].astype(np.float32),
        "identity": identity.astype(np.float16),
        "identity_sigma": np.float32(1.0),
        "expression_names": np.asarray(expressions),
        "expressions": (shapes * CM_TO_MM).astype(np.float16),
        "landmarks": np.asarray(landmarks, dtype=np.int32),
        "face_vertices": np.int32(min(FACE_VERTICES, vertices)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ict_facekit", type=Path,
                        help="local ICT-FaceKit checkout (or its FaceXModel folder)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "dpface_lib" / "simulate" / "assets" / "ict_face.npz")
    parser.add_argument("--vertices", type=int, default=HEAD_VERTICES, help="vertices kept (face + head)")
    parser.add_argument("--identities", type=int, default=None, help="identity modes kept (default all)")
    parser.add_argument("--expressions", default=",".join(EXPRESSIONS), help="blendshape names kept")
    args = parser.parse_args(argv)
    model_dir = args.ict_facekit
    if (model_dir / "FaceXModel").is_dir():
        model_dir = model_dir / "FaceXModel"
    arrays = build(model_dir, args.vertices, args.identities, tuple(args.expressions.split(",")))
    atomic_write(args.out, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): {len(arrays['vertices'])} vertices, {len(arrays['faces'])} "
          f"triangles, {len(arrays['identity'])} identity modes, {len(arrays['expressions'])} expressions")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One acquisition, as a lab would write it: frames straight into Zarr.

    python demo/acquire.py --session 1            # a clean acquisition
    python demo/acquire.py --session 2 --slow     # slow enough to kill

The table and the staged insert are the README's example.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zarr

import stagerd_client as dj

schema = dj.Schema("imaging")


@schema
class ImagingSession(dj.Manual):
    definition = """
    # one imaging session of one subject
    subject_id : int32
    session_id : int32
    ---
    n_frames   : int32
    frame_rate : float32
    frames     : <object@>       # a Zarr array in the default store
    """


def grab(i: int) -> np.ndarray:
    """Stand-in for camera.grab(): a 256x256 frame."""
    return np.full((256, 256), i, dtype="uint16")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session", type=int, default=1)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--slow", action="store_true", help="0.1 s per frame")
    args = parser.parse_args()

    with ImagingSession.staged_insert1 as staged:
        staged.rec["subject_id"] = 1
        staged.rec["session_id"] = args.session
        z = zarr.open(staged.store("frames", ".zarr"), mode="w",
                      shape=(args.frames, 256, 256), chunks=(1, 256, 256),
                      dtype="uint16")
        for i in range(args.frames):
            z[i] = grab(i)
            if args.slow:
                print(f"frame {i}", flush=True)
                time.sleep(0.1)
        staged.rec["n_frames"] = args.frames
        staged.rec["frame_rate"] = 30.0

    row = (ImagingSession & {"subject_id": 1, "session_id": args.session}).fetch1()
    print(f"inserted session {args.session}: {row['frames']}")


if __name__ == "__main__":
    main()

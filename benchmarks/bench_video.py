"""Video analysis measured: how well faces are followed, how fast a clip is analysed, and what
`--detect-every` trades.

    python3 benchmarks/bench_video.py                        # all three parts
    python3 benchmarks/bench_video.py --parts speed --frames 300
    python3 benchmarks/bench_video.py --data ../shared/data --parts tracking every

Every clip is synthetic (benchmarks/clips.py), so the truth is known: heads pasted on a still
background and moved along paths, written to an mp4 and read back as predict.py reads videos.

- **tracking**: two heads crossing (the one behind is hidden for a while), and a head that leaves
  and returns, for the sample photo's head and a recoloured copy, and with --data for pairs of
  SFEW val faces (different people). Each tracker setting is scored: ID switches (an actor's track
  id changed from one matched frame to the next), fragments (tracks an actor got beyond its
  first), swaps (frames where an actor carried an id first given to another actor) and false
  tracks (tracks that matched no actor). A detection is an actor's when its centre lies in the
  actor's pasted picture (the one on top where two overlap).
- **speed**: one head drifting across a 30 fps 640x480 clip, analysed the way predict.py does
  (decode, detect, classify with the flip, track, smooth, the JSON line): frames/s for each
  --detect-every, and where the time of a frame goes. Two head sizes: 300 px (a webcam's face,
  about 130 px) and 150 px (about 65 px: a face under 15 % of the frame, which the default
  detector sends through the whole MTCNN cascade).
- **grid** (not run by default): the tracker's settings tried on the tracking part's clips, the
  way the defaults were chosen.
- **looks** (needs --data): how similar the appearance histograms are, for one face over time
  and for pairs of different people.
- **every** (needs --data): SFEW val faces, one per clip, swaying left and right; the smoothed
  top emotion per frame with --detect-every k against k = 1 (agreement), and each clip's most
  frequent emotion against its label (accuracy), with frames/s.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clips import (Actor, Sprite, astronaut_head, crossing, drifting, leave_and_return,  # noqa: E402
                              recoloured, render, write_video)

Box = Tuple[int, int, int, int]


def score_tracks(frames: Sequence[Sequence[Tuple[Box, int]]], truth: Sequence[Dict[int, Box]]) -> Dict[str, int]:
    """Tracking errors of one clip.

    Args:
        frames: per frame, each face's (box, track id).
        truth: per frame, {actor: its picture's (x, y, w, h)} (benchmarks/clips.render).
    """
    last: Dict[int, int] = {}
    tracks_of: Dict[int, List[int]] = defaultdict(list)
    owner: Dict[int, int] = {}  # track -> the actor it first matched
    matched_tracks = set()
    all_tracks = set()
    out = {"visible": 0, "found": 0, "id_switches": 0, "fragments": 0, "swaps": 0, "false_tracks": 0}
    for faces, seen in zip(frames, truth):
        out["visible"] += len(seen)
        taken = set()
        for box, track in faces:
            all_tracks.add(track)
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            inside = [actor for actor, (x, y, w, h) in seen.items()
                      if x <= cx < x + w and y <= cy < y + h and actor not in taken]
            if not inside:
                continue
            actor = max(inside)  # the one on top: actors are pasted in order, the centre's pixel is its
            taken.add(actor)
            out["found"] += 1
            matched_tracks.add(track)
            owner.setdefault(track, actor)
            if owner[track] != actor:
                out["swaps"] += 1
            if actor in last and last[actor] != track:
                out["id_switches"] += 1
            last[actor] = track
            if track not in tracks_of[actor]:
                tracks_of[actor].append(track)
    out["fragments"] = sum(len(t) - 1 for t in tracks_of.values())
    out["false_tracks"] = len(all_tracks - matched_tracks)
    return out


def analyse(path: Path, recognizer, detect_every: int = 1, smooth: float = 0.5, tracker_options=None,
            timed: bool = False):
    """predict.py's work on one video: per frame, (faces, seconds); the JSON line is formatted too."""
    from inference.sources import iter_inputs, record
    from inference.tracking import FaceTracker
    from inference.video import FaceStream

    stream = FaceStream(recognizer, smooth, detect_every, FaceTracker(**(tracker_options or {})))
    out = []
    start = time.perf_counter()
    for item in iter_inputs([str(path)]):
        if item.image is None:
            raise RuntimeError(item.error)
        faces = stream.step(item.image, item.time)
        json.dumps(record(item, faces, 0.0))
        now = time.perf_counter()
        out.append((faces, now - start))
        start = now
    return out


def sfew_sprites(data: Path, n: int, seed: int = 0, height: int = 220) -> List[Tuple[Sprite, str]]:
    """`n` SFEW val faces (colour movie crops) scaled to `height` px, with their labels."""
    from PIL import Image
    files = sorted((data / "sfew" / "val").glob("*/*.png"))
    if not files:
        raise SystemExit(f"no SFEW val faces under {data / 'sfew' / 'val'}")
    pick = np.random.default_rng(seed).choice(len(files), min(n, len(files)), replace=False)
    out = []
    for k in sorted(pick):
        image = Image.open(files[k]).convert("RGB")
        width = round(image.width * height / image.height)
        out.append((Sprite(files[k].stem, np.asarray(image.resize((width, height), Image.BILINEAR))),
                    files[k].parent.name))
    return out


def tracking_scenes(data: Optional[Path], pairs: int):
    """(title, actors, frames) of the tracking part: the sample head's scenes, then SFEW pairs crossing."""
    head = astronaut_head()
    scenes = [("sample head crossing its recoloured copy", crossing(head, recoloured(head), 90), 90),
              ("a head away for 20 frames (under --max-missed)",
               leave_and_return(head, recoloured(head), 120, (40, 60)), 120),
              ("a head away for 90 frames (over --max-missed 60: a new track is right)",
               leave_and_return(head, recoloured(head), 180, (40, 130)), 180)]
    if data is not None:
        faces = sfew_sprites(data, 2 * pairs, seed=1)
        scenes += [(f"SFEW val pair {k + 1} crossing", crossing(faces[2 * k][0], faces[2 * k + 1][0], 90), 90)
                   for k in range(pairs)]
    return scenes


TRACKERS = {
    "IoU only": {"look_min": 0.0, "regain_min": 2.0},  # no appearance veto, no regaining
    "IoU + look (default)": {},
}


def bench_tracking(recognizer, folder: Path, data: Optional[Path], pairs: int) -> None:
    scenes = tracking_scenes(data, pairs)
    totals = {name: defaultdict(int) for name in TRACKERS}
    print("| scene | tracker | visible | found | ID switches | fragments | swaps | false tracks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, (title, actors, n) in enumerate(scenes):
        frames, truth = render(actors, n)
        path = write_video(folder / f"scene{k}.mp4", frames)
        for name, options in TRACKERS.items():
            result = analyse(path, recognizer, tracker_options=options)
            scores = score_tracks([[(f.box, f.track) for f in faces] for faces, _ in result], truth)
            for key, value in scores.items():
                totals[name][key] += value
            if k < 3:
                print(f"| {title} | {name} | " + " | ".join(str(v) for v in scores.values()) + " |")
    if data is not None:
        for name, scores in totals.items():
            print(f"| all {len(scenes)} scenes | {name} | " + " | ".join(str(v) for v in scores.values()) + " |")


def bench_grid(recognizer, folder: Path, data: Optional[Path], pairs: int) -> None:
    """The tracker's settings tried on the tracking scenes (how the defaults were chosen): the
    detections and looks of every frame are computed once, then each setting tracks them."""
    import itertools

    from inference.sources import iter_inputs
    from inference.tracking import FaceTracker, appearance

    clips = []
    for k, (_, actors, n) in enumerate(tracking_scenes(data, pairs)):
        frames, truth = render(actors, n)
        path = write_video(folder / f"grid{k}.mp4", frames)
        found = []
        for item in iter_inputs([str(path)]):
            faces = recognizer.predict(item.image)
            found.append([(f.box, appearance(item.image, f.box)) for f in faces])
        clips.append((found, truth))
    print("\n| IoU to continue | look veto | missed frames | look to regain | ID switches | fragments | swaps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for iou_min, look_min, max_missed, regain_min in itertools.product([0.3, 0.5], [0.4, 0.6], [30, 60], [0.7, 0.8]):
        totals = defaultdict(int)
        for found, truth in clips:
            tracker = FaceTracker(iou_min=iou_min, look_min=look_min, max_missed=max_missed, regain_min=regain_min)
            tracked = []
            for faces in found:
                tracks = tracker.update([b for b, _ in faces], [look for _, look in faces])
                tracked.append([(b, t.id) for (b, _), t in zip(faces, tracks)])
            for key, value in score_tracks(tracked, truth).items():
                totals[key] += value
        print(f"| {iou_min} | {look_min} | {max_missed} | {regain_min} | {totals['id_switches']} | "
              f"{totals['fragments']} | {totals['swaps']} |")


def bench_looks(recognizer, folder: Path, data: Path) -> None:
    """How far the appearance histogram tells faces apart: one face over a clip's frames against
    pairs of different SFEW faces."""
    from PIL import Image

    from inference.sources import iter_inputs
    from inference.tracking import appearance

    pictures, _ = render(drifting(astronaut_head(), 90), 90)
    path = write_video(folder / "looks.mp4", pictures)
    looks = []
    for item in iter_inputs([str(path)]):
        faces = recognizer.predict(item.image)
        if faces:
            looks.append(appearance(item.image, faces[0].box))
    same = [float(looks[0] @ look) for look in looks[1:]]
    files = sorted((data / "sfew" / "val").glob("*/*.png"))[:60]
    others = np.array([appearance(np.asarray(Image.open(f).convert("RGB")), (20, 30, 100, 120)) for f in files])
    pairs = (others @ others.T)[np.triu_indices(len(others), 1)]
    print(f"\nlook similarity: the sample head against its first frame over 90 frames: median "
          f"{np.median(same):.2f} (5th percentile {np.percentile(same, 5):.2f}); {len(pairs)} pairs of different "
          f"SFEW val faces: median {np.median(pairs):.2f}, 90th percentile {np.percentile(pairs, 90):.2f}")


def bench_speed(recognizer, folder: Path, frames: int, everies: Sequence[int]) -> None:
    from inference.faces import crop_face, resize_faces
    from inference.tracking import appearance

    for side in (300, 150):
        pictures, _ = render(drifting(astronaut_head(side), frames), frames)
        path = write_video(folder / f"drift{side}.mp4", pictures)
        print(f"\nhead {side} px in a 640x480 clip of {frames} frames at 30 fps (one face):")
        print("| --detect-every | frames/s | ms per frame (median) | p90 ms |")
        print("| --- | --- | --- | --- |")
        for k in everies:
            analyse(path, recognizer, k)  # warm-up
            result = analyse(path, recognizer, k)
            ms = [1000 * s for _, s in result]
            print(f"| {k} | {len(ms) / (sum(ms) / 1000):.1f} | {statistics.median(ms):.1f} | "
                  f"{np.percentile(ms, 90):.1f} |")
        parts = defaultdict(list)
        from inference.sources import iter_inputs
        start = time.perf_counter()
        for item in iter_inputs([str(path)]):
            t0 = time.perf_counter()
            parts["decode"].append(t0 - start)
            detections, _ = recognizer.fallback.detect(recognizer.detector, item.image)
            t1 = time.perf_counter()
            crops = resize_faces([crop_face(item.image, d, recognizer.margin, recognizer.align) for d in detections],
                                 recognizer.img_size, recognizer.grayscale)
            t2 = time.perf_counter()
            recognizer.classify(crops)
            t3 = time.perf_counter()
            [appearance(item.image, d.box) for d in detections]
            t4 = time.perf_counter()
            parts["detect"].append(t1 - t0)
            parts["crop"].append(t2 - t1)
            parts["classify (with the flip)"].append(t3 - t2)
            parts["appearance"].append(t4 - t3)
            start = time.perf_counter()
        print("where a frame's time goes (--detect-every 1, medians): " +
              ", ".join(f"{k} {1000 * statistics.median(v):.1f} ms" for k, v in parts.items()))


def bench_every(recognizer, folder: Path, data: Path, clips: int, frames: int, everies: Sequence[int]) -> None:
    sprites = sfew_sprites(data, clips, seed=2)
    results = {k: {"agree": 0, "frames": 0, "correct": 0, "clips": 0, "seconds": 0.0} for k in everies}
    for n, (sprite, label) in enumerate(sprites):
        # swaying 80 px left and right once a second, 30 fps: the box moves ~8 px a frame at most
        actors = [Actor(sprite, lambda f: (320 + 80 * np.sin(2 * np.pi * f / 30), 240))]
        pictures, _ = render(actors, frames)
        path = write_video(folder / f"every{n}.mp4", pictures)
        base = None
        for k in everies:
            result = analyse(path, recognizer, k)
            tops = [faces[0].smoothed_emotion if faces else None for faces, _ in result]
            base = tops if base is None else base
            r = results[k]
            r["agree"] += sum(a == b for a, b in zip(tops, base))
            r["frames"] += len(tops)
            found = [t for t in tops if t is not None]
            r["correct"] += bool(found) and max(set(found), key=found.count) == label
            r["clips"] += 1
            r["seconds"] += sum(s for _, s in result)
    print(f"\n{clips} SFEW val faces, one per clip of {frames} frames, swaying 80 px each way once a second:")
    print("| --detect-every | agreement with 1 (frames) | clip accuracy (majority emotion) | frames/s |")
    print("| --- | --- | --- | --- |")
    for k, r in results.items():
        print(f"| {k} | {100 * r['agree'] / r['frames']:.2f} % | {100 * r['correct'] / r['clips']:.1f} % | "
              f"{r['frames'] / r['seconds']:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model (default: the project's default model)")
    p.add_argument("--data", type=Path, default=None, help="../shared/data, for the SFEW parts")
    p.add_argument("--parts", nargs="+", default=["tracking", "speed", "every"],
                   choices=["tracking", "speed", "every", "grid", "looks"])
    p.add_argument("--frames", type=int, default=300, help="frames of the speed clip")
    p.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5], help="--detect-every values")
    p.add_argument("--pairs", type=int, default=10, help="SFEW pairs for the tracking part")
    p.add_argument("--clips", type=int, default=40, help="SFEW clips for the detect-every part")
    p.add_argument("--clip-frames", type=int, default=60, help="frames of each detect-every clip")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from inference.recognizer import EmotionRecognizer
    recognizer = EmotionRecognizer(args.checkpoint, threads=args.threads)
    print(f"model {recognizer.checkpoint.name}, detector {type(recognizer.detector).__name__}, "
          f"{args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "tracking" in args.parts:
            bench_tracking(recognizer, folder, args.data, args.pairs)
        if "grid" in args.parts:
            bench_grid(recognizer, folder, args.data, args.pairs)
        if "looks" in args.parts and args.data is not None:
            bench_looks(recognizer, folder, args.data)
        if "speed" in args.parts:
            bench_speed(recognizer, folder, args.frames, args.every)
        if "every" in args.parts:
            if args.data is None:
                print("\n(--detect-every against labels: give --data ../shared/data)")
            else:
                bench_every(recognizer, folder, args.data, args.clips, args.clip_frames, args.every)


if __name__ == "__main__":
    main()

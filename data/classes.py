"""Canonical expression class names and the synonyms found in public datasets.

Every dataset is stored with these folder names, so datasets merge by name and a
checkpoint's class list means the same thing whatever it was trained on.
"""

_SYNONYMS = {
    "anger": "angry",
    "angry": "angry",
    "contempt": "contempt",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
}


def normalize_class_name(name: str) -> str:
    """Map a dataset's class name to the canonical one.

    Names that are not expressions we know (a user's own classes) are kept,
    lower-cased, so custom class sets still work.
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _SYNONYMS.get(key, key)

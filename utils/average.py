"""Old name of `python3 -m tools.average` (moved in this release; this alias goes in the next one)."""
if __name__ == "__main__":
    from utils._moved import forward

    forward("utils.average")

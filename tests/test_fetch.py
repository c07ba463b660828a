"""utils.inference.fetch: downloads from a local server, and each failure as one clear sentence."""
import time

import numpy as np
import pytest

from utils.errors import UserError
from utils.inference.fetch import FetchLimits, fetch, fetch_image


LIMITS = FetchLimits(connect_timeout=2, read_timeout=0.5, max_bytes=1024 * 1024, max_redirects=3)

def test_fetch_good_image(photo_server, astronaut):
    image = np.asarray(fetch_image(photo_server + "/good.jpg", LIMITS))
    assert image.shape == astronaut.shape

@pytest.mark.parametrize("path, message", [
    ("/missing.jpg", "HTTP 404"),
    ("/slow.jpg", "timed out"),
    ("/page.html", "not an image (the server sent text/html)"),
    ("/big.jpg", "passed the limit of 1.0 MB and was stopped"),
    ("/declared-big.jpg", "over the download limit"),
    ("/loop", "more than 3 redirects"),
])
def test_fetch_failures_are_one_clear_sentence(photo_server, path, message):
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch_image(photo_server + path, LIMITS)
    assert message in str(err.value) and str(err.value).startswith(photo_server + path)
    assert "\n" not in str(err.value) and time.monotonic() - start < 2.5

def test_fetch_refuses_other_schemes():
    with pytest.raises(UserError, match="only http and https"):
        fetch("file:///etc/passwd")

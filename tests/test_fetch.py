"""inference.fetch: downloads from a local server, and each failure as one clear sentence."""
import time

import numpy as np
import pytest

from common.errors import UserError
from inference.fetch import FetchLimits, fetch, fetch_image


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


@pytest.mark.parametrize("address, words", [
    ("::ffff:10.0.0.1", "10.0.0.1, which is a private"),         # IPv4-mapped
    ("::10.0.0.1", "10.0.0.1, which is a private"),              # IPv4-compatible
    ("::127.0.0.1", "127.0.0.1, which is a loopback"),
    ("2002:a00:1::1", "10.0.0.1, which is a private"),           # 6to4 of 10.0.0.1
    ("2002:7f00:1::", "127.0.0.1, which is a loopback"),
    ("2002:a9fe:a9fe::1", "169.254.169.254, which is a link-local"),  # the cloud metadata address
    ("64:ff9b::192.168.1.1", "192.168.1.1, which is a private"),  # NAT64
    ("64:ff9b:1::a00:1", "10.0.0.1, which is a private"),
])
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(address, words):
    from inference.fetch import UrlRefused, check_public_address
    with pytest.raises(UrlRefused, match=words):
        check_public_address("example.org", address)


@pytest.mark.parametrize("address", ["2002:808:808::1", "64:ff9b::8.8.8.8", "::ffff:8.8.8.8", "2606:4700::1111",
                                     "8.8.8.8"])
def test_public_addresses_in_any_form_pass(address):
    from inference.fetch import check_public_address
    check_public_address("example.org", address)  # no refusal

"""The async S3 reader against moto's real S3 server: listings (delimiter, recursive, past
1,000 keys), conditional GETs, the size cap, and each fault with its one line, some injected
by a proxy in front of moto. Requests are counted by kind, retries included."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator

import pytest
from s3fixtures import REGION, S3Endpoint, S3Run
from s3proxy import FaultProxy, start_proxy

from bench.common import free_port
from cardserver.s3.client import INSTALL_HINT, Backoff, Got, Kind, S3Error, S3Reader, load_aiobotocore
from cardserver.s3.settings import S3Root

SECRET = "not-a-real-secret-but-never-print-me"
QUICK = Backoff(base=0.01, cap=0.05, give_up_after=5)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS chain, fed from the environment as a user would."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
async def proxy(s3_server: S3Endpoint) -> AsyncIterator[tuple[FaultProxy, str]]:
    async for pair in start_proxy(s3_server.url):
        yield pair


def put(s3_server: S3Endpoint, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=body)


def one_line(error: pytest.ExceptionInfo[S3Error]) -> str:
    line = str(error.value)
    assert "\n" not in line and SECRET not in line and "Traceback" not in line
    return line


async def test_delimiter_listings_find_flows_and_runs(s3_server: S3Endpoint, s3_card_run: S3Run) -> None:
    datastore = S3Root(s3_server.bucket, s3_card_run.prefix.rstrip("/"))
    async with S3Reader(s3_server.url) as reader:
        top = await reader.list_folder(datastore)
        runs = await reader.list_folder(datastore.child("mf.cards"), f"{s3_card_run.flow}/runs/")
    assert top.folders == [f"datastore/{s3_card_run.flow}/", "datastore/mf.cards/"] and top.objects == []
    assert runs.folders == [f"datastore/mf.cards/{s3_card_run.flow}/runs/{s3_card_run.run_id}/"]
    assert reader.counts.sent == {Kind.LIST: 2, Kind.GET: 0}


async def test_listings_page_past_1000_keys(s3_server: S3Endpoint) -> None:
    root = S3Root(s3_server.bucket, "many")
    s3_server.put_many({root.key(f"run{i:04}", "x"): b"" for i in range(1050)})
    async with S3Reader(s3_server.url) as reader:
        tree = await reader.list_tree(root)
        assert reader.counts.sent[Kind.LIST] == 2  # S3 answers at most 1,000 keys a page
        folders = await reader.list_folder(root)
        assert reader.counts.sent[Kind.LIST] == 4
    assert len(tree) == 1050 and tree[-1].key == "many/run1049/x"
    assert len(folders.folders) == 1050 and folders.folders[0] == "many/run0000/"


async def test_conditional_get_answers_unchanged_until_the_object_changes(s3_server: S3Endpoint) -> None:
    key = "conditional/card.data.json"
    put(s3_server, key, b'{"n": 1}')
    async with S3Reader(s3_server.url) as reader:
        first = await reader.get(s3_server.bucket, key)
        assert first.outcome is Got.NEW and first.body == b'{"n": 1}' and first.etag
        again = await reader.get(s3_server.bucket, key, etag=first.etag)
        assert again.outcome is Got.UNCHANGED and again.body == b""
        put(s3_server, key, b'{"n": 2}')
        changed = await reader.get(s3_server.bucket, key, etag=first.etag)
    assert changed.outcome is Got.NEW and changed.body == b'{"n": 2}' and changed.etag != first.etag
    assert reader.counts.sent[Kind.GET] == 3 and reader.counts.not_modified == 1
    assert reader.counts.cost_usd() == pytest.approx(3 * 0.0004 / 1000)


async def test_an_object_over_the_size_cap_is_refused(s3_server: S3Endpoint) -> None:
    put(s3_server, "big/card.html", b"x" * 5000)
    async with S3Reader(s3_server.url) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.get(s3_server.bucket, "big/card.html", max_bytes=4096)
    where = f"s3://{s3_server.bucket}/big/card.html"
    assert one_line(raised) == f"{where} is 5000 bytes, over the 4096-byte limit"


async def test_an_object_deleted_between_list_and_get_is_gone(s3_server: S3Endpoint) -> None:
    root = S3Root(s3_server.bucket, "deleted")
    put(s3_server, root.key("a.data.json"), b"{}")
    async with S3Reader(s3_server.url) as reader:
        [listed] = await reader.list_tree(root)
        s3_server.client().delete_object(Bucket=s3_server.bucket, Key=listed.key)
        fetched = await reader.get(s3_server.bucket, listed.key)
    assert fetched.outcome is Got.GONE


async def test_a_missing_bucket_is_one_line(s3_server: S3Endpoint) -> None:
    async with S3Reader(s3_server.url) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.list_folder(S3Root("no-such-bucket-here", "x"))
    assert one_line(raised) == "S3 bucket 'no-such-bucket-here' does not exist (at this endpoint)"


async def test_a_wrong_endpoint_is_one_line() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with S3Reader(endpoint, connect_timeout=2) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.list_folder(S3Root("some-bucket", ""))
    assert one_line(raised).startswith(f"cannot reach the S3 endpoint {endpoint}")


async def test_no_credentials_is_one_line(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: object) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role off EC2
    async with S3Reader(s3_server.url) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.list_folder(S3Root(s3_server.bucket, ""))
    assert one_line(raised).startswith("no AWS credentials found")


async def test_throttling_backs_off_and_recovers(
    s3_server: S3Endpoint, proxy: tuple[FaultProxy, str]
) -> None:
    faults, url = proxy
    put(s3_server, "throttled/x", b"1")
    faults.slowdowns = 3
    async with S3Reader(url, backoff=QUICK) as reader:
        listing = await reader.list_tree(S3Root(s3_server.bucket, "throttled"))
    assert [item.key for item in listing] == ["throttled/x"]
    assert reader.counts.sent[Kind.LIST] == 4 and reader.counts.retried == 3 and len(faults.requests) == 4


async def test_throttling_that_never_ends_gives_up_with_one_line(
    s3_server: S3Endpoint, proxy: tuple[FaultProxy, str]
) -> None:
    faults, url = proxy
    faults.slowdowns = 10**6
    started = time.monotonic()
    async with S3Reader(url, backoff=Backoff(base=0.01, cap=0.05, give_up_after=0.5)) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.get(s3_server.bucket, "throttled/x")
    where = f"s3://{s3_server.bucket}/throttled/x"
    assert one_line(raised) == f"S3 kept throttling (SlowDown) GET {where}; giving up for now"
    assert time.monotonic() - started < 10 and reader.counts.retried >= 2


async def test_access_denied_on_part_of_the_prefix(
    s3_server: S3Endpoint, proxy: tuple[FaultProxy, str], caplog: pytest.LogCaptureFixture
) -> None:
    faults, url = proxy
    put(s3_server, "shared/open/x", b"1")
    put(s3_server, "shared/secret/y", b"2")
    faults.denied = "secret"
    caplog.set_level(logging.DEBUG)
    root = S3Root(s3_server.bucket, "shared")
    async with S3Reader(url, backoff=QUICK) as reader:
        assert [item.key for item in await reader.list_tree(root, "open/")] == ["shared/open/x"]
        with pytest.raises(S3Error) as raised:
            await reader.list_tree(root, "secret/")
    where = f"s3://{s3_server.bucket}/shared/secret/"
    assert one_line(raised) == (f"access denied (AccessDenied) to LIST {where}: "
                                "check the credentials' permissions")
    assert SECRET not in caplog.text


async def test_dropped_connections_are_retried(s3_server: S3Endpoint, proxy: tuple[FaultProxy, str]) -> None:
    faults, url = proxy
    put(s3_server, "dropped/x", b"payload")
    faults.drops = 2
    async with S3Reader(url, backoff=QUICK) as reader:
        fetched = await reader.get(s3_server.bucket, "dropped/x")
    assert fetched.outcome is Got.NEW and fetched.body == b"payload"
    # aiohttp itself resends once on a reused keep-alive connection the server closed, so
    # the reader may see fewer drops than the proxy made
    assert len(faults.requests) == 3 and 1 <= reader.counts.retried <= 2


def endless_root(s3_server: S3Endpoint, faults: FaultProxy) -> S3Root:
    """A folder whose listings the proxy says are never over (IsTruncated, every page)."""
    root = S3Root(s3_server.bucket, "endless")
    put(s3_server, root.key("a", "x"), b"")
    faults.endless = "prefix=endless"
    return root


async def test_a_listing_that_never_ends_stops_at_the_page_cap(
    s3_server: S3Endpoint, proxy: tuple[FaultProxy, str]
) -> None:
    """An endpoint that always answers IsTruncated (issue 21, finding 5): the listing gives up
    after `max_list_pages` requests with one line; the check before start-up sends one."""
    faults, url = proxy
    root = endless_root(s3_server, faults)
    async with S3Reader(url, max_list_pages=7) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.list_tree(root)
        assert faults.kinds["LIST"] == 7
        await reader.can_list(root)
        assert faults.kinds["LIST"] == 8
    where = f"s3://{s3_server.bucket}/endless/"
    assert one_line(raised) == f"listing {where} is still truncated after 7 pages, the most read per listing"


async def test_a_listing_that_takes_too_long_stops_at_its_timeout(
    s3_server: S3Endpoint, proxy: tuple[FaultProxy, str]
) -> None:
    faults, url = proxy
    root = endless_root(s3_server, faults)
    started = time.monotonic()
    async with S3Reader(url, max_list_pages=10**9, list_seconds=0.5) as reader:
        with pytest.raises(S3Error) as raised:
            await reader.list_folder(root)
    assert 0.5 <= time.monotonic() - started < 5 and faults.kinds["LIST"] > 1
    where = f"s3://{s3_server.bucket}/endless/"
    assert one_line(raised) == f"listing {where} took over 0.5 s, the longest a listing may take"


async def test_a_range_of_the_version_listed(s3_server: S3Endpoint) -> None:
    """A ranged GET reads the bytes asked for of the object listed; once rewritten it is GONE."""
    root = S3Root(s3_server.bucket, "ranged")
    put(s3_server, root.key("log"), b"0123456789")
    async with S3Reader(s3_server.url) as reader:
        [listed] = await reader.list_tree(root)
        fetched = await reader.get_range(s3_server.bucket, listed.key, 2, 5, listed.etag)
        assert fetched.outcome is Got.NEW and fetched.body == b"234"
        put(s3_server, listed.key, b"0123456789 and more")
        assert (await reader.get_range(s3_server.bucket, listed.key, 2, 5, listed.etag)).outcome is Got.GONE


def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # what Python sees when it is not installed
    with pytest.raises(S3Error) as raised:
        load_aiobotocore()
    assert str(raised.value) == INSTALL_HINT
    assert "pip install 'cardserver[s3]'" in INSTALL_HINT

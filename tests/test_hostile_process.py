"""The real `runwatch run` process against input meant to end it, fill it or make it talk.

| the trial found                                  | here, a real daemon process must           |
| ------------------------------------------------ | ------------------------------------------ |
| a lone UTF-16 surrogate in API text crashed the  | record its baseline and deliver the run's  |
| commit, and every restart after it               | message (with U+FFFD), with no error       |
| ~1,000 idle connections to /metrics: EMFILE, and | keep polling and delivering under a 1,024  |
| the daemon died                                  | file limit it cannot raise                 |
| a 3 GB response read whole (7.8 GB of RSS)       | stop reading at poll.max_response_bytes    |
| an error body echoing the request headers leaked | keep the key, whole or any 12 characters   |
| 55 characters of the key everywhere              | of it, out of logs, /healthz, the state    |
|                                                  | files and the self-alert it sends          |
"""

from __future__ import annotations

import json
import resource
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import DaemonProcess, wait_until, write_config
from receiver import Receiver

from runwatch.core.model import FAILED
from runwatch.simulator.server import Fault, Simulator

DEADLINE_S = 20.0
SURROGATE = "\ud83d"  # half an emoji: valid JSON as an escape, not encodable as UTF-8


def config(
    tmp_path: Path, sim: Simulator, receiver: Receiver, poll: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:  # fmt: skip
    return write_config(
        tmp_path,
        sim,
        channels={"hook": receiver.apprise_url("/hook")},
        poll={"interval": "200ms", "page_size": 20, **(poll or {})},
        **sections,
    )


def with_surrogates(body: Any) -> Any:
    items = body["items"] if isinstance(body, dict) and "items" in body else [body]
    for item in items:
        if isinstance(item, dict) and "spec" in item:
            item["spec"]["flow"]["name"] = f"yolo{SURROGATE}"
            for condition in item["status"]["conditions"]:
                condition["message"] = f"cut in half {SURROGATE}"
    return body


def test_it_survives_lone_surrogates_from_the_baseline_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Strings that cannot be encoded are made safe where they are decoded: the baseline is
    recorded, the failure is delivered, nothing is logged as an error."""
    with Simulator(runs=30, active=3, seed=4) as sim:
        for endpoint in ("list", "get"):
            sim.inject(
                Fault(kind="rewrite", rewrite=with_surrogates, endpoint=endpoint), count=10_000
            )
        with DaemonProcess(config(tmp_path, sim, receiver)) as daemon:
            daemon.wait_for_event("baseline.recorded", DEADLINE_S)
            failing = sim.active_run_ids()[0]
            sim.append_condition(failing, FAILED, message="x")
            [message] = receiver.wait_for(1, DEADLINE_S)
            assert daemon.proc.poll() is None
        assert daemon.wait(DEADLINE_S) != 0  # killed by the context manager, not crashed
    assert "\ufffd" in json.dumps(message, ensure_ascii=False)
    assert not [e for e in daemon.logs if e.get("level") in ("error", "critical")]


def test_it_keeps_polling_and_delivering_through_a_thousand_idle_connections(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A flood of connections that never speak costs the health server at most a few
    descriptors at a time; polling and delivery go on under a 1,024 file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1_200:
        pytest.fail(f"this test needs an open-file hard limit of 1,200 or more, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1_200), hard))
    idle: list[socket.socket] = []
    with Simulator(runs=30, active=3, seed=5) as sim:
        cfg = config(tmp_path, sim, receiver, http={"listen": "127.0.0.1:0"})
        with DaemonProcess(cfg, file_limit=1_024) as daemon:
            url = daemon.wait_for_event("http.listening", DEADLINE_S)["url"]
            port = int(url.rsplit(":", 1)[1])
            daemon.wait_for_event("baseline.recorded", DEADLINE_S)
            try:
                for _ in range(1_000):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    idle.append(s)
                failing = sim.active_run_ids()[0]
                sim.append_condition(failing, FAILED)
                receiver.wait_for(1, DEADLINE_S)
                assert daemon.proc.poll() is None
            finally:
                for s in idle:
                    s.close()

            def healthy() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, DEADLINE_S, "/healthz to answer again")
            sim.append_condition(sim.active_run_ids()[0], FAILED)
            receiver.wait_for(2, DEADLINE_S)
    assert not [e for e in daemon.logs if e.get("level") == "critical"]


def test_it_stops_reading_a_huge_response_at_its_cap(tmp_path: Path, receiver: Receiver) -> None:
    """A 1 GiB answer is cut off at poll.max_response_bytes: the poll fails and says why, the
    daemon's memory stays near its cap, and the next poll works."""
    with Simulator(runs=30, active=3, seed=6) as sim:
        cfg = config(tmp_path, sim, receiver, poll={"max_response_bytes": "8MiB"})
        with DaemonProcess(cfg) as daemon:
            daemon.wait_for_event("baseline.recorded", DEADLINE_S)
            sim.inject(Fault(kind="huge", size=1 << 30, endpoint="list"), count=1)
            failed = daemon.wait_for_event("poll.failed", DEADLINE_S)
            assert "more than 8388608 bytes" in failed["error"]
            peak = daemon.peak_rss_kib()
            sim.append_condition(sim.active_run_ids()[0], FAILED)
            receiver.wait_for(1, DEADLINE_S)
    assert peak < 200 * 1024, f"peak RSS {peak} KiB while refusing a 1 GiB body"


@pytest.mark.parametrize("part", ["whole", "first-55", "middle-40"])
def test_it_keeps_an_echoed_key_out_of_everything_it_writes(
    tmp_path: Path, receiver: Receiver, part: str
) -> None:
    """A server quoting the Authorization header back, whole or cut, leaves no 12 characters
    of the key in the log, /healthz, the state files or the self-alert sent to admins."""
    with Simulator(runs=10, active=2, seed=7) as sim:
        key = sim.secret_key
        shown = {"whole": key, "first-55": key[:55], "middle-40": key[30:70]}[part]
        body = json.dumps({"message": f"rejected request; headers: Authorization: Bearer {shown}"})
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook"), "admins": receiver.apprise_url("/a")},
            rules=[{"name": "all", "match": {}, "notify": ["hook"]}],
            poll={"interval": "200ms", "max_attempts": 1},
            alerts={"notify": ["admins"], "api_down_after": "1s"},
            http={"listen": "127.0.0.1:0"},
        )
        with DaemonProcess(cfg) as daemon:
            url = daemon.wait_for_event("http.listening", DEADLINE_S)["url"]
            daemon.wait_for_event("baseline.recorded", DEADLINE_S)
            sim.inject(Fault(kind="raw", status=500, body=body.encode()), count=10_000)
            [alert] = receiver.wait_for(1, DEADLINE_S, "a")
            health = httpx.get(f"{url}/healthz", timeout=5).text
        files = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    written = "\n".join([daemon.stderr, health, json.dumps(alert), files.decode("latin-1")])
    assert "rejected request" in daemon.stderr and "rejected request" in health
    pieces = [key[i : i + 12] for i in range(len(key) - 11)]
    assert [p for p in pieces if p in written] == []
